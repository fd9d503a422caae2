"""Settings (env + CLI, validation, documentation) and the model registry file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.registry import RegistryError, load_registry
from backend.settings import SETTING_FIELDS, SettingsError, env_name, load_settings, parse_cli

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_valid():
    s = load_settings(environ={})
    assert (s.host, s.port, s.initial_peers) == ("127.0.0.1", 5000, [])
    assert s.uses_embedded_swarm


def test_environment_and_cli_precedence():
    env = {"PETALS_CHAT_PORT": "6000",
           "PETALS_CHAT_INITIAL_PEERS": "/ip4/1.2.3.4/tcp/1/p2p/Qm1, /ip4/5.6.7.8/tcp/2/p2p/Qm2",
           "PETALS_CHAT_DEBUG": "true"}
    s = load_settings(environ=env, cli=parse_cli(["--port", "7000", "--no-debug"]))
    assert s.port == 7000 and s.debug is False
    assert s.initial_peers == ["/ip4/1.2.3.4/tcp/1/p2p/Qm1", "/ip4/5.6.7.8/tcp/2/p2p/Qm2"]
    assert not s.uses_embedded_swarm


@pytest.mark.parametrize("env, phrase", [
    ({"PETALS_CHAT_PORT": "http"}, "invalid setting port (PETALS_CHAT_PORT): 'http' is not a valid int"),
    ({"PETALS_CHAT_PORT": "70000"}, "is above 65535"),
    ({"PETALS_CHAT_DTYPE": "int4"}, "choose one of auto, float32, bfloat16, float16"),
    ({"PETALS_CHAT_INITIAL_PEERS": "example.org:31337"}, "is not a multiaddr"),
    ({"PETALS_CHAT_MODELS": "/nonexistent/models.toml"}, "no such file"),
    ({"PETALS_CHAT_STEP_TIMEOUT": "0"}, "is below 0.1"),
    ({"PETALS_CHAT_DEBUG": "perhaps"}, "is not a valid bool"),
])
def test_invalid_settings_fail_with_one_line(env, phrase):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env)
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_cli_rejects_bad_settings_before_loading_anything():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "backend", "--port", "nope"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: invalid setting port (PETALS_CHAT_PORT): 'nope' is not a valid int"


def test_every_setting_is_documented_in_the_readme():
    from backend.settings import markdown_table

    readme = (REPO / "README.md").read_text()
    missing = [env_name(f.name) for f in SETTING_FIELDS if f"`{env_name(f.name)}`" not in readme]
    assert not missing, f"settings missing from README: {missing}"
    assert markdown_table() in readme, "README's settings table is stale: paste `python -m backend settings`"


def test_default_registry(tmp_path):
    registry = load_registry(REPO / "backend" / "models.toml", tmp_path)
    embedded = registry.subset(embedded=True)
    assert embedded.default == "SmolLM2-135M-Instruct"
    spec = embedded.lookup("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert spec.key == "SmolLM2-135M-Instruct" and spec.repository == f"{tmp_path}/SmolLM2-135M-Instruct"
    assert spec.chat.use_chat_template and spec.chat.stop_token == "<|im_end|>"
    llama = registry.lookup("Llama-2-70b-chat-hf")
    assert llama.public_api is False and llama.chat.sep_token == "###"
    described = spec.describe(ready=False, chat_template="T")
    assert set(described) == {"key", "aliases", "family", "name", "model_card", "license", "public_api", "chat",
                              "ready"}
    assert described["chat"]["chat_template"] == "T"


@pytest.mark.parametrize("text, phrase", [
    ("families = [", "cannot read model registry"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\n", "missing 'backend'"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r'}\nchat={colour=1}\n",
     "unknown field(s) colour"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r', aliases=['m']}\n",
     "name 'm' used by both"),
    ("default='x'\n[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r'}\n",
     "default model 'x' is not defined"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r'}\n"
     "chat={generation_params={beams=2}}\n", "unknown parameter(s) beams"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r'}\n"
     "chat={presets={Wild={temperature=2, beams=2}}}\n", "chat.presets.Wild: unknown parameter(s) beams"),
    ("[[families]]\nname='A'\n[[families.models]]\nkey='m'\nbackend={repository='r'}\n"
     "chat={presets={Wild=1}}\n", "chat.presets: must be a table of tables"),
])
def test_registry_errors(tmp_path, text, phrase):
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=re.escape(phrase)):
        load_registry(path, tmp_path)
