"""The embedded default end to end: `python -m backend` with no peers starts its own swarm serving SmolLM2.

Asks the real model through the full stack (swarm -> Petals client -> backend -> WebSocket API) and checks
that Ctrl-C leaves no child process behind. Also: a swarm of two servers each holding half of the blocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request

import psutil
import pytest
import websockets
from conftest import REPO, free_port, start_backend, stop_backend, wait_healthy, ws_generate_once

pytestmark = pytest.mark.timeout(400)


async def _chat(ws_url: str, prompt: str, model: str | None = None, max_length: int = 512) -> str:
    async with websockets.connect(ws_url + "/api/v2/generate", open_timeout=10) as ws:
        request = {"type": "open_inference_session", "max_length": max_length}
        if model:
            request["model"] = model
        await ws.send(json.dumps(request))
        assert json.loads(await ws.recv()) == {"ok": True}
        await ws.send(json.dumps({"type": "generate", "inputs": prompt, "max_new_tokens": 1, "do_sample": 0,
                                  "stop_sequence": "<|im_end|>"}))
        text = ""
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 120))
            assert reply["ok"], reply
            text += reply["outputs"]
            if reply["stop"]:
                return text


def test_embedded_swarm_answers_and_stops_cleanly(tmp_path, embedded_dir):
    from transformers import AutoTokenizer

    port = free_port()
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PETALS_CHAT_")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PETALS_CHAT_PORT=str(port),
               PETALS_CHAT_MODELS_DIR=str(embedded_dir.parent), PETALS_CHAT_DTYPE="float32")
    process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log, 300)
        out = log.read_text()
        assert "Embedded swarm is up" in out and "/ip4/127.0.0.1/tcp/" in out and f"running at {url}" in out
        models = json.loads(urllib.request.urlopen(url + "/api/v1/models").read())
        assert models["default"] == "SmolLM2-135M-Instruct" and [m["key"] for m in models["models"]] == [
            "SmolLM2-135M-Instruct"]

        tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               tokenize=False, add_generation_prompt=True)
        answer = asyncio.run(_chat(f"ws://127.0.0.1:{port}", prompt))
        assert "Paris" in answer and answer.endswith("<|im_end|>"), answer

        children = psutil.Process(process.pid).children(recursive=True)
        names = {c.name() for c in children}
        assert any("p2pd" in n for n in names) and len(children) >= 3  # server, its p2pd, the client's p2pd
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # helpers such as torch_shm_manager exit on their own once their clients are gone: give them a moment
    _, alive = psutil.wait_procs(children, timeout=20)
    alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(c.pid, c.name()) for c in alive]}\n{log.read_text()[-3000:]}"


def test_two_servers_each_serving_half_of_the_blocks(tmp_path, tiny_model, test_registry, reference):
    from backend.swarm.launcher import LocalSwarm

    swarm = LocalSwarm(tiny_model, dht_prefix="tiny-test", servers=2)
    assert swarm.blocks == [(0, 2), (2, 4)]
    peers = swarm.start()
    try:
        server = start_backend(tmp_path, {"PETALS_CHAT_INITIAL_PEERS": " ".join(peers),
                                          "PETALS_CHAT_MODELS": str(test_registry)})
        try:
            ready = json.loads(urllib.request.urlopen(server.url + "/readyz", timeout=30).read())
            assert ready["models"]["tiny"]["servers"] == 2 and ready["models"]["tiny"]["swarm_ok"]
            prompt = "<|im_start|>user\nsplit<|im_end|>\n"

            reply = asyncio.run(ws_generate_once(server.ws_url, "tiny", prompt, max_length=64, max_new_tokens=12,
                                                 timeout=120))
            expected = reference.greedy_ids(reference.encode(prompt), 12)
            route = reply.pop("route")  # the last frame's optional facts: the servers that held the blocks
            assert [(hop["start"], hop["end"]) for hop in route] == [(0, 2), (2, 4)] and reply.pop("context_tokens")
            listed = json.loads(urllib.request.urlopen(server.url + "/api/v1/swarm?model=tiny", timeout=30).read())
            assert [(s["peer_id"], s["start"], s["end"]) for s in listed["servers"]] == [
                (hop["peer_id"], hop["start"], hop["end"]) for hop in route]
            assert reply == {"ok": True, "outputs": reference.decode(expected), "stop": True,
                             "token_count": len(expected)}
        finally:
            stop_backend(server)
    finally:
        swarm.stop(grace=3)
