"""`python -m backend swarm --initial-peers`: a second swarm command joins a first one (on loopback) by its printed
multiaddr, serving the other half of the blocks; the app, given only the joiner's address, generates through both
(greedy output equal to plain transformers) and stays healthy although a registry entry (Llama-2-70b, as in the
default registry) cannot load offline. Each command stops its own processes on SIGTERM, leaving the other's."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import REPO, start_backend, stop_backend, write_minimal_registry

pytestmark = pytest.mark.timeout(420)

PREFIX = "join-test"
UNLOADABLE = """
[[families]]
name = "Llama 2"

[[families.models]]
key = "meta-llama/Llama-2-70b-chat-hf"
[families.models.backend]
repository = "meta-llama/Llama-2-70b-chat-hf"
"""  # a second model that cannot load offline: it must not hold the app's health back


class SwarmCommand:
    """A running ``python -m backend swarm`` whose output is read on a thread (never a blocking read in the test)."""

    def __init__(self, *args: str):
        self.process = subprocess.Popen([sys.executable, "-m", "backend", "swarm", *args, "--quiet"], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def line(self, prefix: str, timeout: float = 150) -> str:
        """Wait for the next line of output that starts with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {prefix!r} line in time:\n" + "".join(self.lines)) from None
            assert line is not None, "the swarm command exited early:\n" + "".join(self.lines)
            self.lines.append(line)
            if line.startswith(prefix):
                return line.strip()

    def peers(self) -> list[str]:
        """Wait for the INITIAL_PEERS= line (the command prints it once its blocks are served)."""
        return self.line("INITIAL_PEERS=").removeprefix("INITIAL_PEERS=").split()

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            raise


def _gone(processes: list[psutil.Process]) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=20)
    return not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_second_swarm_command_joins_by_initial_peers_and_the_app_uses_both(tmp_path: Path, tiny_model, reference):
    first = SwarmCommand(str(tiny_model), "--blocks", "0:2", "--dht-prefix", PREFIX)
    second = None
    server = None
    try:
        first_peers = first.peers()
        second = SwarmCommand(str(tiny_model), "--blocks", "2:4", "--dht-prefix", PREFIX,
                              "--initial-peers", *first_peers)
        second_peers = second.peers()
        assert all(p.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3Koo" in p for p in first_peers + second_peers)
        assert {p.rsplit("/", 1)[1] for p in first_peers}.isdisjoint(p.rsplit("/", 1)[1] for p in second_peers)
        assert "serving blocks 2:4" in (ready := second.line("Swarm ready:"))
        assert ready.endswith(f"dht_prefix={PREFIX}, joined the swarm at {' '.join(first_peers)}. Ctrl-C to stop.")

        registry = tmp_path / "models.toml"
        write_minimal_registry(registry, tiny_model, PREFIX, max_session_length=256, more=UNLOADABLE)
        # only the joiner's address: the first command's blocks are found through the shared DHT
        server = start_backend(tmp_path, {"PETALS_CHAT_INITIAL_PEERS": " ".join(second_peers),
                                          "PETALS_CHAT_MODELS": str(registry)}, all_models=False)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            health = client.get("/healthz")  # start_backend waited for it: the 70B entry does not hold it back
            assert health.status_code == 200 and health.json()["status"] == "ok"
            ready = client.get("/readyz")
            body = ready.json()
            tiny, llama = body["models"]["tiny"], body["models"]["meta-llama/Llama-2-70b-chat-hf"]
            assert ready.status_code == 200 and body["status"] == "ready", body
            assert tiny["state"] == "ready" and tiny["swarm_ok"], tiny
            assert tiny["servers"] == 2 and tiny["blocks_served"] == tiny["blocks_total"] == 4, tiny
            assert llama["state"] in ("failed", "loading") and not llama["ready"], llama
            assert llama["state"] == "loading" or (llama["error"] and llama["retry_in_s"] >= 0), llama

            prompt = "<|im_start|>user\nacross two swarm commands<|im_end|>\n"
            answer = client.post("/api/v1/generate", json={"model": "tiny", "inputs": prompt, "max_new_tokens": 8,
                                                            "do_sample": 0})
            assert answer.status_code == 200 and answer.json()["ok"], answer.text
            # blocks 0:2 live only in the first command's server and 2:4 only in the joiner's: an exact greedy
            # answer went through both
            expected = reference.decode(reference.greedy_ids(reference.encode(prompt), 8))
            assert answer.json()["outputs"] == expected

            refused = client.post("/api/v1/generate", json={"model": "meta-llama/Llama-2-70b-chat-hf", "inputs": "x",
                                                            "max_new_tokens": 1}).json()
            assert refused["ok"] is False and "\n" not in refused["traceback"]
            assert refused["traceback"].startswith("Model meta-llama/Llama-2-70b-chat-hf "), refused
        stop_backend(server)
        server = None

        # SIGTERM ends the joiner and all its processes (p2pd included); the first command keeps serving
        children = second.children()
        assert sum("p2pd" in c.name() for c in children) >= 1
        assert second.terminate() == 0
        assert _gone(children)
        assert first.process.poll() is None
    finally:
        if server is not None:
            stop_backend(server)
        if second is not None and second.process.poll() is None:
            second.terminate()
        first_children = first.children() if first.process.poll() is None else []
        assert first.terminate() == 0
        assert _gone(first_children)


def test_initial_peers_must_be_multiaddrs(tiny_model):
    result = subprocess.run([sys.executable, "-m", "backend", "swarm", str(tiny_model), "--initial-peers",
                             "10.0.0.2:31337"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not a peer multiaddr" in result.stderr
