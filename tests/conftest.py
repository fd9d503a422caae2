"""Shared fixtures: a real tiny model, a real local Petals swarm, a real Hypercorn backend.

* ``tiny_model``: a random-weight 4-layer Llama (hidden 64) saved with
  ``save_pretrained``, paired with the embedded model's real tokenizer
  (SmolLM2, ChatML template). Deterministic: seeded.
* ``swarm``: one Petals server process serving all its blocks
  (``backend.swarm.launcher``).
* ``live_server``: ``python -m backend`` (Hypercorn) on a free port, connected
  to ``swarm``, with a test registry (``tiny``, ``tiny-private`` with
  ``public_api = false``, ``tiny-legacy`` with the original ``###`` format).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EMBEDDED_NAME = "SmolLM2-135M-Instruct"


def embedded_model_dir() -> Path:
    """The prepared embedded model (prepared on first use; cached in models/)."""
    models_dir = Path(os.environ.get("PETALS_CHAT_MODELS_DIR", REPO / "models"))
    folder = models_dir / EMBEDDED_NAME
    if not (folder / ".verified").is_file():
        from backend.embedded.prepare import prepare_model

        folder = prepare_model(models_dir)
    return folder


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_dir) -> Path:
    from backend.swarm.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_dir)


@pytest.fixture(scope="session")
def swarm(tiny_model, tmp_path_factory):
    from backend.swarm.launcher import LocalSwarm

    swarm = LocalSwarm(tiny_model, dht_prefix="tiny-test", servers=1,
                       log_file=tmp_path_factory.mktemp("swarm") / "swarm.log")
    swarm.start()
    yield swarm
    swarm.stop(grace=3)


REGISTRY_TEMPLATE = """
default = "tiny"

[[families]]
name = "Tiny"

[[families.models]]
key = "tiny"
[families.models.backend]
repository = "{path}"
aliases = ["tiny-alias"]
dht_prefix = "tiny-test"
[families.models.frontend]
name = "Tiny (ChatML)"
model_card = "https://example.org/tiny"
license = "https://example.org/license"
[families.models.chat]
max_session_length = 2048
use_chat_template = true
sep_token = "\\n"
stop_token = "<|im_end|>"
extra_stop_sequences = ["<|endoftext|>"]
system_prompt = "You are a test."
generation_params = {{ do_sample = 0 }}

[[families.models]]
key = "tiny-private"
[families.models.backend]
repository = "{path}"
dht_prefix = "tiny-test"
public_api = false
[families.models.frontend]
name = "Tiny private (### format)"
[families.models.chat]
max_session_length = 2048
sep_token = "###"
stop_token = "###"
extra_stop_sequences = ["</s>"]
system_prompt = "A chat."
"""


MINIMAL_REGISTRY = """
default = "tiny"

[[families]]
name = "Tiny"

[[families.models]]
key = "tiny"
[families.models.backend]
repository = "{path}"
dht_prefix = "{prefix}"
[families.models.chat]
max_session_length = {max_length}
"""


def write_minimal_registry(path: Path, model_path: Path, prefix: str, max_session_length: int,
                           more: str = "") -> Path:
    """A registry with one model, ``tiny``, and only what is required (the swarm-join and multi-host tests), then
    ``more`` registry text."""
    path.write_text(MINIMAL_REGISTRY.format(path=model_path, prefix=prefix, max_length=max_session_length) + more)
    return path


def write_registry(folder: Path, model_path: Path) -> Path:
    path = folder / "models.toml"
    path.write_text(REGISTRY_TEMPLATE.format(path=model_path))
    return path


@pytest.fixture
def registry(tmp_path) -> Path:
    """The test registry for in-process apps on the fake engine (which never reads the weights)."""
    return write_registry(tmp_path, tmp_path / "no-weights")


@pytest.fixture(scope="session")
def test_registry(tmp_path_factory, tiny_model) -> Path:
    return write_registry(tmp_path_factory.mktemp("registry"), tiny_model)


@dataclass
class LiveServer:
    url: str
    ws_url: str
    process: subprocess.Popen
    log: Path

    def metrics_value(self, name: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        text = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    return sample.value
        raise KeyError(name)

    def open_sessions(self) -> float:
        return self.metrics_value("petals_chat_sessions_open")

    def wait_for_sessions(self, expected: float = 0, timeout: float = 20) -> float:
        """Poll the open-sessions gauge until it equals ``expected`` (or time runs out); return it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.open_sessions()
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.1)


def poll_until(check, timeout: float, what: str, interval: float = 0.2):
    """Call ``check()`` until it returns something truthy and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


async def ws_generate_once(ws_url: str, model: str, prompt: str, *, max_length: int, max_new_tokens: int,
                           timeout: float = 60) -> dict:
    """Open a session on ``/api/v2/generate``, send one generate request, return its first reply frame."""
    import asyncio
    import json

    import websockets

    async with websockets.connect(ws_url + "/api/v2/generate", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "open_inference_session", "model": model, "max_length": max_length}))
        assert json.loads(await ws.recv()) == {"ok": True}
        await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": max_new_tokens}))
        return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def apoll_until(check, what: str, timeout: float = 10) -> None:
    """:func:`poll_until` for a test running on the event loop (of an app under test): polls without blocking it."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    from backend.swarm.launcher import free_port as _free

    return _free()


def start_backend(tmp: Path, env_extra: dict[str, str], timeout: float = 180, all_models: bool = True) -> LiveServer:
    """``python -m backend`` on a free port; returns once /healthz is 200 and, with ``all_models``, every model is
    ready (/healthz turns 200 as soon as one model is)."""
    port = free_port()
    log = tmp / "backend.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PETALS_CHAT_HOST": "127.0.0.1", "PETALS_CHAT_PORT": str(port),
           "PETALS_CHAT_DTYPE": "float32", "PETALS_CHAT_DEVICE": "cpu", **env_extra}
    process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env,
                               stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log, timeout, all_models=all_models)
    except TimeoutError:
        process.kill()
        raise
    return LiveServer(url=url, ws_url=f"ws://127.0.0.1:{port}", process=process, log=log)


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 180, *, all_models: bool = False,
                 context=None) -> None:
    """Poll ``url``/healthz until it is 200 (and, with ``all_models``, every model is ready); RuntimeError if the
    process exits first, TimeoutError after ``timeout`` s, each with the log's tail. ``context``: an SSL context."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            response = urllib.request.urlopen(url + "/healthz", timeout=2, context=context)
            models = json.loads(response.read())["models"].values()
            if response.status == 200 and (not all_models or all(m["ready"] for m in models)):
                return
        except Exception:
            pass
        time.sleep(0.3)  # polling pace
    raise TimeoutError(f"backend did not become healthy in {timeout} s:\n{log.read_text()[-4000:]}")


def stop_backend(server: LiveServer) -> None:
    import signal

    try:
        os.killpg(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, swarm, test_registry):
    tmp = tmp_path_factory.mktemp("backend")
    server = start_backend(tmp, {
        "PETALS_CHAT_INITIAL_PEERS": " ".join(swarm.initial_peers),
        "PETALS_CHAT_MODELS": str(test_registry),
        "PETALS_CHAT_FRONTEND_DIR": str(REPO / "frontend" / "dist"),
        "PETALS_CHAT_STEP_TIMEOUT": "20",
        "PETALS_CHAT_MAX_SESSIONS_PER_CLIENT": "64",
        # every test client is 127.0.0.1; the per-address fairness limits have their own tests
        "PETALS_CHAT_MAX_IDLE_SESSIONS_PER_CLIENT": "64", "PETALS_CHAT_MAX_TOKENS_PER_CLIENT": "1000000",
        # the page's sessions are resumable: kept this long after the browser tests close them (the e2e reload
        # test reattaches within a few seconds), so later tests' "no session left" checks see them gone in time
        "PETALS_CHAT_REATTACH_WINDOW": "15",
        # no kept sessions: tests here count open sessions (test_prompt_cache has its own backend with reuse)
        "PETALS_CHAT_PROMPT_CACHE_SESSIONS": "0",
    })
    yield server
    stop_backend(server)
    print(server.log.read_text()[-3000:])


@pytest.fixture(scope="session")
def reference(tiny_model):
    """Plain transformers on the same weights: the ground truth for greedy outputs."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model)
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_model, torch_dtype=torch.float32).eval()

    class Reference:
        def greedy_ids(self, prompt_ids: list[int], max_new_tokens: int, eos: bool = True) -> list[int]:
            with torch.inference_mode():
                inputs = torch.tensor([prompt_ids])
                # an explicit mask: the prompt may contain the pad token (<|im_end|>), which must not be masked
                out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                                     do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id if eos else None,
                                     pad_token_id=tokenizer.eos_token_id)
            return out[0, len(prompt_ids):].tolist()

        def encode(self, text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        def decode(self, ids: list[int]) -> str:
            return tokenizer.decode(ids)

    Reference.tokenizer = tokenizer
    return Reference()
