"""The OpenAI API on the embedded SmolLM2-135M-Instruct (a real model: real answers), with the ``openai`` SDK.

One backend (``python -m backend`` with no peers: its own swarm) serves every test of this module.
"""

from __future__ import annotations

import os

import openai
import pytest
from conftest import start_backend, stop_backend

pytestmark = pytest.mark.timeout(400)

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, embedded_dir):
    assert not os.environ.get("PETALS_CHAT_INITIAL_PEERS")  # no peers: the embedded swarm
    server = start_backend(tmp_path_factory.mktemp("embedded"), {"PETALS_CHAT_MODELS_DIR": str(embedded_dir.parent)},
                           timeout=300)
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    stop_backend(server)


def test_without_a_system_message_the_template_default_answers_paris(embedded):
    result = embedded.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, temperature=0,
                                              max_tokens=24)
    assert result.choices[0].message.content == "The capital of France is Paris."
    assert result.choices[0].finish_reason == "stop"
