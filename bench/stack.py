"""The system under test: a model folder, a local Petals swarm, and ``python -m backend``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
MODEL_KEY = "bench"


REGISTRY = """
default = "{key}"

[[families]]
name = "Bench"

[[families.models]]
key = "{key}"
[families.models.backend]
repository = "{path}"
dht_prefix = "{prefix}"
public_api = true
[families.models.frontend]
name = "Benchmark model"
[families.models.chat]
max_session_length = {max_len}
use_chat_template = true
sep_token = "\\n"
stop_token = "<|im_end|>"
extra_stop_sequences = ["<|endoftext|>"]
system_prompt = "You are a benchmark."
generation_params = {{ do_sample = 0 }}
"""


def write_registry(folder: Path, model_path: Path, prefix: str, max_len: int) -> Path:
    path = folder / "models.toml"
    path.write_text(REGISTRY.format(key=MODEL_KEY, path=model_path, prefix=prefix, max_len=max_len))
    return path


@contextlib.contextmanager
def thread_env(threads: int | None) -> Iterator[None]:
    """Set the torch/OpenMP thread count for child processes started inside the block."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {n: os.environ.get(n) for n in names}
    if threads:
        for n in names:
            os.environ[n] = str(threads)
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


@dataclass
class Backend:
    url: str
    ws_url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def get_json(self, path: str, timeout: float = 5) -> tuple[int, object]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def start_backend(tmp: Path, *, peers: list[str], registry: Path, client_dtype: str, threads: int | None,
                  timeout: float = 240) -> Backend:
    from backend.swarm.launcher import free_port

    port = free_port()
    log = tmp / "backend.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PETALS_CHAT_HOST": "127.0.0.1", "PETALS_CHAT_PORT": str(port),
           "PETALS_CHAT_INITIAL_PEERS": " ".join(peers), "PETALS_CHAT_MODELS": str(registry),
           "PETALS_CHAT_DTYPE": client_dtype, "PETALS_CHAT_DEVICE": "cpu",
           "PETALS_CHAT_MAX_SESSIONS": "1000", "PETALS_CHAT_MAX_SESSIONS_PER_CLIENT": "1000",
           # every benchmark client comes from 127.0.0.1: lift the per-address fairness limits
           "PETALS_CHAT_MAX_IDLE_SESSIONS_PER_CLIENT": "1000", "PETALS_CHAT_MAX_TOKENS_PER_CLIENT": "10000000",
           "PETALS_CHAT_MAX_CONCURRENT_GENERATIONS": "128",
           "PETALS_CHAT_STEP_TIMEOUT": "900", "PETALS_CHAT_LOG_LEVEL": "warning"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    backend = Backend(url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}", process=process, log=log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            status, body = backend.get_json("/api/v1/models", timeout=2)
            if status == 200 and any(m.get("ready") for m in body.get("models", [])):
                return backend
        except Exception:
            pass
        time.sleep(0.3)
    backend.stop()
    raise RuntimeError(f"backend did not become ready in {timeout} s:\n{log.read_text()[-4000:]}")
