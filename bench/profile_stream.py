"""``python -m bench.profile_stream``: where one stream's time per token goes (py-spy + CPU accounting), and
which process limits 16 sessions.

Starts a one-server swarm of the embedded model (batching on, as the app runs it), drives one greedy stream
with the raw Petals client in this process, and records: CPU seconds per token of each process (the server
and its handler processes, each p2pd, this client), and py-spy samples of the server and of this process,
grouped into named stages. Then it starts the backend on the same swarm and runs 16 WebSocket chat sessions at
once, recording each process's share of one core: is the backend's per-session work (embeddings, LM head,
sampling, RPC) the limit, or the server? Writes ``docs/profile.md`` (and prints it). Needs ``py-spy``.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from .resources import machine
from .stack import EMBEDDED_DIR, REPO

PROMPT = "Count to one hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
# stage name -> substrings of a frame; the first stage matching a sample's innermost-to-outermost frames wins
STAGES = [
    ("server: model forward (blocks)", ("TransformerBackend.inference_step", "decode_block", "BatchedStep.forward")),
    ("server: task pool + runtime IPC", ("task_pool.py", "runtime.py", "mpfuture.py", "send_outputs")),
    ("server: request handling (deserialize, serialize, RPC)", ("handler.py", "block_functions.py",
                                                                "serialization", "p2p_daemon.py")),
    ("client: LM head", ("lm_head.py", "coalesced_head.py")),
    ("client: embeddings + final norm + sampling (transformers generate)", ("generation/utils.py",
                                                                            "modeling_llama.py")),
    ("client: Petals inference session + RPC", ("inference_session.py", "sequential_autograd", "remote_",
                                                "p2p", "hivemind")),
]
IDLE = ("Connection._recv", "Condition.wait", "socket.accept", ".select (", "Event.wait", "Queue.get",
        "_wait_for_tstate_lock", "worker (multiprocessing/pool.py", "_handle_tasks", "_handle_results",
        "_run_once", "time.sleep", "SimpleQueue.get")


def stage_of(frames: list[str]) -> str | None:
    if any(k in frames[-1] for k in IDLE):
        return None
    for name, keys in STAGES:
        if any(k in f for f in frames for k in keys):
            return name
    return "other (Python runtime, threads, logging)"


def cpu_by_process(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of the server's processes and of this client's, by role (py-spy excluded)."""
    return cpu_of({"server": server_pid, "client": os.getpid()})


def main(client_dtype: str = "bfloat16") -> int:
    from backend.swarm.launcher import LocalSwarm

    from .raw_client import RawClient

    tokens = 64
    tmp = Path(tempfile.mkdtemp(prefix="petals-chat-profile-"))
    swarm = LocalSwarm(EMBEDDED_DIR, dht_prefix=f"profile-{os.getpid()}", servers=1, torch_dtype="bfloat16",
                       log_file=tmp / "swarm.log")
    try:
        peers = swarm.start()
        client = RawClient(str(EMBEDDED_DIR), peers, swarm.dht_prefix, client_dtype)
        from backend.engine.coalesced_head import install

        install(client.model)  # as the app runs it
        client.generate(PROMPT, 8, stop_at_eos=False)  # warm-up
        server_pid = swarm.servers[0].process.pid
        before = cpu_by_process(server_pid)  # pass 1: timing and CPU, nothing attached
        stream, _ = client.generate(PROMPT, tokens, stop_at_eos=False)
        after = cpu_by_process(server_pid)
        spy = shutil_which("py-spy")  # pass 2: where the Python time goes, sampled at a gentle 50 Hz
        outs = {"server": tmp / "server.txt", "client": tmp / "client.txt"}
        procs = [subprocess.Popen([spy, "record", "--subprocesses", "-r", "50", "-f", "raw", "-o", str(outs[k]),
                                   "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k, pid in (("server", server_pid), ("client", os.getpid()))]
        time.sleep(1.0)  # py-spy attaches
        for _ in range(3):
            client.generate(PROMPT, tokens, stop_at_eos=False)
        for p in procs:
            p.send_signal(2)
            p.wait(timeout=30)
        sessions = many_sessions(swarm, peers, tmp)
    finally:
        swarm.stop(grace=3)
    ms_per_token = 1000 * (stream.end - stream.arrivals[0][0]) / max(1, stream.tokens - 1)
    report = render(outs, {k: (after[k] - before.get(k, 0.0)) * 1000 / tokens for k in after}, ms_per_token)
    report += render_sessions(*sessions)
    (REPO / "docs" / "profile.md").write_text(report)
    print(report)
    return 0


def many_sessions(swarm, peers: list[str], tmp: Path, n: int = 16, tokens: int = 64) -> tuple[dict, dict, int]:
    """CPU seconds of each process while ``n`` WebSocket chat sessions answer at once through the backend."""
    import asyncio

    from . import clients
    from .stack import MODEL_KEY, start_backend, write_registry
    from .stats import concurrent_summary

    registry = write_registry(tmp, EMBEDDED_DIR, swarm.dht_prefix, 8192)
    backend = start_backend(tmp, peers=peers, registry=registry, client_dtype="auto", threads=None)
    try:
        n_prompt = len(clients_tokens(PROMPT))
        asyncio.run(clients.ws_concurrent(backend.ws_url, MODEL_KEY, PROMPT, n_prompt, 8, n))  # warm-up
        roots = {"server": swarm.servers[0].process.pid, "backend": backend.pid}
        before, started = cpu_of(roots), time.monotonic()
        streams = asyncio.run(clients.ws_concurrent(backend.ws_url, MODEL_KEY, PROMPT, n_prompt, tokens, n))
        wall = time.monotonic() - started
        after = cpu_of(roots)
    finally:
        backend.stop()
    share = {k: (after[k] - before.get(k, 0.0)) / wall for k in after}
    return share, concurrent_summary(streams), n


def clients_tokens(text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(EMBEDDED_DIR)(text, add_special_tokens=False)["input_ids"]


def cpu_of(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each root process and of its children, by role; a process counts for its nearest
    root (the server this client started counts for "server"), py-spy for none."""
    sides = {pid: side for side, pid in roots.items()}
    out: dict[str, float] = collections.Counter()
    seen: set[int] = set()
    for pid in roots.values():
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                if p.pid in seen or p.name() == "py-spy":
                    continue
                seen.add(p.pid)
                owner = next(a.pid for a in [p, *p.parents()] if a.pid in sides)
                name = p.name()
                role = "main process" if p.pid == owner else ("p2pd" if name == "p2pd" else "helper processes")
                t = p.cpu_times()
                out[f"{sides[owner]}: {role}"] += t.user + t.system
            except (psutil.NoSuchProcess, StopIteration):
                pass
    return out


def render_sessions(share: dict[str, float], summary: dict, n: int) -> str:
    lines = ["", f"{n} WebSocket chat sessions at once through the backend ({summary['tokens']} tokens, "
             f"{summary['aggregate_tokens_per_s']:.1f} tokens/s, inter-token latency p50 "
             f"{summary['itl_p50_ms']:.0f} ms): each process's CPU, as a share of one core (psutil; the machine "
             f"has {psutil.cpu_count()}):", "", "| process | share of one core |", "|---|---|"]
    lines += [f"| {name} | {100 * v:.0f}% |" for name, v in sorted(share.items(), key=lambda x: -x[1]) if v >= 0.005]
    return "\n".join(lines) + "\n"


def shutil_which(name: str) -> str:
    import shutil

    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        raise SystemExit(f"{name} is not installed (pip install {name})")
    return found


def render(outs: dict[str, Path], cpu_ms: dict[str, float], ms_per_token: float) -> str:
    samples: collections.Counter = collections.Counter()
    total = 0
    for path in outs.values():
        for line in path.read_text().splitlines() if path.exists() else []:
            stack, _, n = line.rpartition(" ")
            stage = stage_of(stack.split(";"))
            if stage:
                samples[stage] += int(n)
                total += int(n)
    m = machine()
    lines = ["<!-- generated by python -m bench.profile_stream; do not edit -->", "",
             f"_{dt.datetime.now().astimezone().isoformat(timespec='seconds')} | {m['cpu']}, {m['cores']} cores | "
             f"SmolLM2-135M-Instruct, server bfloat16, client bfloat16 (the app's default here) | one greedy "
             f"stream, 64 tokens, raw Petals client with the app's coalesced LM head | "
             f"{ms_per_token:.1f} ms per token_", "",
             "CPU time per token, by process (psutil):", "", "| process | CPU ms per token |", "|---|---|"]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in sorted(cpu_ms.items(), key=lambda x: -x[1]) if ms >= 0.05]
    lines += ["", "Busy Python samples by stage (py-spy, server and client together; p2pd is Go and not sampled):",
              "", "| stage | share of busy samples |", "|---|---|"]
    lines += [f"| {name} | {100 * n / total:.0f}% |" for name, n in samples.most_common()] if total else []
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    code = main()
    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(code)
