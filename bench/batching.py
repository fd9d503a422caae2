"""``python -m bench.batching``: stock Petals server vs batched server, and the physical limit, in one run.

    python -m bench.batching            # embedded SmolLM2-135M, 1/4/16/64 sessions (about 5 minutes on 2 cores)
    python -m bench.batching --quick    # fewer tokens and sessions

For each server kind (``--no_batching``, then batching on) it starts a one-server swarm of the embedded model, a
backend on it, and runs WebSocket chat sessions at each concurrency, sampling the server's and the backend's
memory. Then it times the in-process transformers decode step at the same batch sizes: what this CPU can do for
this model with no swarm at all. Writes ``bench/results/batching.json`` and, for a full run, ``docs/batching.md``,
``docs/batching.png`` and the README's batching table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from . import batching_report, clients  # noqa: E402
from .resources import machine, usage  # noqa: E402
from .stack import EMBEDDED_DIR, MODEL_KEY, REPO, start_backend, write_registry  # noqa: E402
from .stats import concurrent_summary  # noqa: E402

PROMPT = "Count to one hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
# asked at once (so the batched server runs them together), greedy: both servers must give the same answers
QUESTIONS = ("What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
             "Write a haiku about the sea.", "Who wrote Romeo and Juliet?", "What does a CPU do?",
             "Give me a synonym for happy.", "How many legs does a spider have?")
KINDS = ("stock", "batched")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 tokens per session, sessions 1,4,16")
    p.add_argument("--sessions", default=None, help="session counts (default 1,4,16,64)")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per session (default 32; 64 sessions: 16)")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="server block dtype")
    p.add_argument("--model", type=Path, default=EMBEDDED_DIR, help="model folder (default: the embedded model)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="results folder")
    p.add_argument("--no-docs", action="store_true", help="never write docs/ or the README")
    args = p.parse_args(argv)
    args.sessions = [int(x) for x in (args.sessions or ("1,4,16" if args.quick else "1,4,16,64")).split(",")]
    args.tokens = args.tokens or (8 if args.quick else 32)
    args.docs = not (args.no_docs or args.quick or args.sessions != [1, 4, 16, 64])
    return args


class MemorySampler:
    """Peak RSS of a few process trees, sampled every 50 ms while a measurement runs."""

    def __init__(self, pids: dict[str, int]):
        self.pids, self.peak = pids, dict.fromkeys(pids, 0.0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self):
        while not self.stop.wait(0.05):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], usage(pid).tree_rss_mb)


def measure_kind(kind: str, args, tmp: Path, progress) -> dict:
    from backend.swarm.cache_size import auto_cache_tokens, server_flags
    from backend.swarm.launcher import LocalSwarm, model_num_blocks

    prefix = f"bench-{kind}-{os.getpid()}"
    (tmp / kind).mkdir()
    registry = write_registry(tmp / kind, args.model, prefix, 8192)
    cache = auto_cache_tokens(args.model, args.dtype, model_num_blocks(args.model))
    flags = server_flags(batching=kind == "batched", max_batch=64, cache_tokens=cache)
    swarm = LocalSwarm(args.model, dht_prefix=prefix, servers=1, torch_dtype=args.dtype, extra_args=flags,
                       log_file=tmp / kind / "swarm.log")
    backend = None
    try:
        progress(f"{kind}: starting swarm and backend")
        peers = swarm.start()
        backend = start_backend(tmp / kind, peers=peers, registry=registry, client_dtype="auto", threads=None)
        n_prompt = len(_tokenizer(args.model)(PROMPT, add_special_tokens=False)["input_ids"])
        asyncio.run(clients.ws_stream(backend.ws_url, MODEL_KEY, PROMPT, n_prompt, 4))  # warm-up
        progress(f"{kind}: {len(QUESTIONS)} fixed questions at once, greedy")
        answers = asyncio.run(fixed_answers(backend.url))
        levels = []
        for n in args.sessions:
            tokens = args.tokens if n < 64 else max(4, args.tokens // 2)
            progress(f"{kind}: {n} sessions x {tokens} tokens")
            pids = {"server": swarm.servers[0].process.pid, "backend": backend.pid}
            with MemorySampler(pids) as memory:
                streams = asyncio.run(clients.ws_concurrent(backend.ws_url, MODEL_KEY, PROMPT, n_prompt, tokens, n))
            levels.append({**concurrent_summary(streams), "tokens_per_session": tokens,
                           "peak_rss_mb": {k: round(v, 1) for k, v in memory.peak.items()}})
        return {"kind": kind, "flags": flags, "levels": levels, "answers": answers}
    finally:
        if backend is not None:
            backend.stop()
        swarm.stop(grace=3)


async def fixed_answers(url: str, max_tokens: int = 24) -> list[str]:
    """The greedy answers to :data:`QUESTIONS`, asked all at once through the OpenAI API."""
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        async def one(question: str) -> str:
            r = await client.post(f"{url}/v1/chat/completions", json={
                "model": MODEL_KEY, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                "temperature": 0})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"]

        return list(await asyncio.gather(*(one(q) for q in QUESTIONS)))


def _tokenizer(model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model)


def inprocess_steps(args, progress, cache_tokens: int = 64, repeats: int = 15) -> list[dict]:
    """ms per decode step of plain transformers in this process, batch b, a ``cache_tokens`` cache."""
    import torch
    import transformers

    progress("in-process transformers decode step")
    model = transformers.LlamaForCausalLM.from_pretrained(args.model, torch_dtype=getattr(torch, args.dtype)).eval()
    out = []
    with torch.inference_mode():
        for b in args.sessions:
            ids = torch.randint(100, 1000, (b, cache_tokens))
            past = model(ids, use_cache=True).past_key_values
            step = torch.randint(100, 1000, (b, 1))
            times = []
            for _ in range(repeats + 3):  # the first calls of a shape warm up the kernels: not counted
                start = time.perf_counter()
                model(step, past_key_values=past, use_cache=True)
                times.append(time.perf_counter() - start)
            ms = min(times[3:]) * 1000  # the limit: the least-disturbed step (a median moves with other load)
            out.append({"batch": b, "ms_per_step": round(ms, 1), "tokens_per_s": round(b * 1000 / ms, 1)})
    return out


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not (args.model / "config.json").is_file():
        print(f"error: no model in {args.model} (make model)", file=sys.stderr)
        return 2
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="petals-chat-bench-batching-"))
    from tqdm import tqdm

    bar = tqdm(total=2 * (len(args.sessions) + 2) + 1, unit="step", file=sys.stderr, dynamic_ncols=True)

    def progress(what: str) -> None:
        bar.set_description_str(what[:44].ljust(44))
        bar.update(1)

    try:
        kinds = {kind: measure_kind(kind, args, tmp, progress) for kind in KINDS}
        limit = inprocess_steps(args, progress)
    finally:
        bar.close()
    results = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
               "config": {"model": args.model.name, "swarm_dtype": args.dtype,
                          "client_dtype": "auto (the app default)",
                          "tokens": args.tokens, "sessions": args.sessions},
               "kinds": kinds, "inprocess": limit}
    results["targets"] = batching_report.targets(results)
    results["config"]["duration_s"] = round(time.time() - started, 1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    batching_report.write_all(results, out, REPO / "docs" if args.docs else None,
                              REPO / "README.md" if args.docs else None)
    print(batching_report.markdown(results))
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(code)
