"""``python -m bench.profile_stream``: where one stream's time per token goes (py-spy + CPU accounting).

Starts a one-server swarm of the embedded model (batching on, as the app runs it), drives one greedy stream
with the raw Petals client in this process, and records: CPU seconds per token of each process (the server
and its handler processes, each p2pd, this client), and py-spy samples of the server and of this process,
grouped into named stages. Writes ``docs/profile.md`` (and prints it). Needs ``py-spy`` (``pip install py-spy``).
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
    out: dict[str, float] = collections.Counter()
    me = psutil.Process()
    for side, root in (("server", psutil.Process(server_pid)), ("client", me)):
        for p in [root, *root.children(recursive=True)]:
            try:
                name = p.name()
                if name == "py-spy" or (side == "client" and _is_under(p, server_pid)):
                    continue
                role = "main process" if p.pid == root.pid else ("p2pd" if name == "p2pd" else "helper processes")
                t = p.cpu_times()
                out[f"{side}: {role}"] += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return out


def _is_under(proc: psutil.Process, pid: int) -> bool:
    try:
        return any(parent.pid == pid for parent in proc.parents()) or proc.pid == pid
    except psutil.NoSuchProcess:
        return True


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
    finally:
        swarm.stop(grace=3)
    ms_per_token = 1000 * (stream.end - stream.arrivals[0][0]) / max(1, stream.tokens - 1)
    report = render(outs, {k: (after[k] - before.get(k, 0.0)) * 1000 / tokens for k in after}, ms_per_token)
    (REPO / "docs" / "profile.md").write_text(report)
    print(report)
    return 0


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
