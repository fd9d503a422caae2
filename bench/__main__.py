"""``python -m bench``: benchmark the backend against the raw Petals client on one local swarm.

    python -m bench                  # embedded SmolLM2-135M (about 6-8 minutes on 2 cores)
    python -m bench --tiny --quick   # a tiny random Llama, few tokens (well under 2 minutes)

Writes ``OUT/latest.json`` and ``OUT/bench.png`` (OUT: ``bench/results``), prints a
table, and (full runs with the default OUT only) refreshes ``docs/bench.md`` and
``docs/bench.png``. ``--help`` lists the knobs (swarm dtype, thread split, sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from backend.swarm.tiny_model import make_tiny_model  # noqa: E402

from . import clients, report  # noqa: E402
from .resources import CpuMeter, machine, usage  # noqa: E402
from .stack import EMBEDDED_DIR, MODEL_KEY, REPO, start_backend, thread_env, write_registry  # noqa: E402
from .stats import Stream, concurrent_summary, single_summary  # noqa: E402

# Greedy decoding keeps counting: no end-of-text within the budget, so every stream has the same length.
PROMPTS = ["Count to one hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
           "The numbers are 1, 2, 3, 4, 5, 6, 7, 8,", "a b c d e f g h i j k", "Hello world. " * 4]
PARIS_QUESTION = "What is the capital of France?"


def _embedded_dtype_default() -> str:
    from backend.engine.device import resolve_block_dtype
    from backend.settings import Settings

    return resolve_block_dtype(Settings.__dataclass_fields__["embedded_dtype"].default, "cpu")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the embedded SmolLM2")
    p.add_argument("--quick", action="store_true", help="fewer tokens, repeats and idle sessions")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--docs", type=Path, default=None,
                   help="also write bench.md and bench.png here (default: docs/ for a full embedded run "
                        "with the default --out)")
    p.add_argument("--no-docs", action="store_true", help="never write docs/")
    p.add_argument("--tokens", type=int, default=None, help="new tokens per single stream (default 64; quick 16)")
    p.add_argument("--concurrency", default=None, help="session counts (default 1,4,16,64)")
    p.add_argument("--conc-tokens", type=int, default=None,
                   help="new tokens per concurrent session (default 32; quick 8; 64 sessions: half)")
    p.add_argument("--repeats", type=int, default=None, help="single-stream repeats (default 5; quick 2)")
    p.add_argument("--idle", default=None, help="idle WebSocket session counts (default 0,100,500)")
    p.add_argument("--dtype", default=_embedded_dtype_default(), choices=("float32", "bfloat16"),
                   help="the swarm server's block dtype (default: the app's PETALS_CHAT_EMBEDDED_DTYPE default)")
    p.add_argument("--client-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="dtype of the client side (backend PETALS_CHAT_DTYPE and the raw client)")
    p.add_argument("--server-threads", type=int, default=None, help="OMP/torch threads of the swarm server")
    p.add_argument("--client-threads", type=int, default=None,
                   help="OMP/torch threads of the backend process and of the raw client")
    p.add_argument("--label", default="", help="a note stored with the results")
    args = p.parse_args(argv)
    q = args.quick
    args.tokens = args.tokens or (16 if q else 64)
    args.conc_tokens = args.conc_tokens or (8 if q else 32)
    args.repeats = args.repeats or (2 if q else 5)
    args.concurrency = [int(x) for x in (args.concurrency or "1,4,16,64").split(",") if x]
    args.idle = [int(x) for x in (args.idle or ("0,50,100" if q else "0,100,500")).split(",") if x]
    default_out = args.out is None
    args.out = args.out or REPO / "bench" / "results"
    if args.docs is None and default_out and not args.tiny and not args.quick:
        args.docs = REPO / "docs"
    if args.no_docs:
        args.docs = None
    return args


class Progress:
    def __init__(self, total: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def step(self, what: str) -> None:
        self.bar.set_description_str(what[:40].ljust(40))

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.time()
    steps = 6 + 2 * args.repeats + 3 + 2 * len(args.concurrency) + len(args.idle) + (0 if args.tiny else 1)
    progress = Progress(steps)
    tmp = Path(tempfile.mkdtemp(prefix="petals-chat-bench-"))

    import torch

    if args.client_threads:
        torch.set_num_threads(args.client_threads)
    from backend.swarm.launcher import LocalSwarm

    progress.step("model")
    if args.tiny:
        model_path = make_tiny_model(tmp / "tiny-llama", EMBEDDED_DIR)
        model_name, max_len = "tiny random Llama (4 layers, hidden 64)", 2048
    else:
        if not (EMBEDDED_DIR / "config.json").is_file():
            print(f"error: the embedded model is not prepared in {EMBEDDED_DIR} (make model)", file=sys.stderr)
            return 2
        model_path, model_name, max_len = EMBEDDED_DIR, "SmolLM2-135M-Instruct (embedded)", 8192
    prefix = f"bench-{os.getpid()}"
    registry = write_registry(tmp, model_path, prefix, max_len)
    progress.done()

    progress.step(f"swarm ({args.dtype})")
    swarm = LocalSwarm(model_path, dht_prefix=prefix, servers=1, torch_dtype=args.dtype, log_file=tmp / "swarm.log")
    backend = None
    try:
        with thread_env(args.server_threads):
            peers = swarm.start()
        progress.done()
        progress.step("backend + raw client")
        with thread_env(args.client_threads):
            import threading

            holder: dict = {}
            t = threading.Thread(target=lambda: holder.update(b=_start(tmp, peers, registry, args)), daemon=True)
            t.start()
            from .raw_client import RawClient

            raw = RawClient(str(model_path), peers, prefix, args.client_dtype)
            t.join()
        backend = holder.get("b", RuntimeError("backend failed to start"))
        if isinstance(backend, BaseException):
            raise backend
        progress.done()
        results = asyncio.run(_measure(args, raw, backend, swarm, progress, model_name))
    finally:
        progress.close()
        if backend is not None and not isinstance(backend, BaseException):
            backend.stop()
        swarm.stop(grace=3)

    results["config"]["duration_s"] = round(time.time() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_all(results, args.out, args.docs)
    print(report.table(results))
    print(f"\nresults: {args.out / 'latest.json'}" + (f"; docs: {args.docs}" if args.docs else ""))
    return 0


def _start(tmp, peers, registry, args):
    try:
        return start_backend(tmp, peers=peers, registry=registry, client_dtype=args.client_dtype,
                             threads=args.client_threads)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        return e


async def _measure(args, raw, backend, swarm, progress: Progress, model_name: str) -> dict:
    loop = asyncio.get_running_loop()
    server_pid = swarm.servers[0].process.pid
    pids = {"backend": backend.pid, "server": server_pid, "bench": os.getpid()}
    exclude = {"bench": server_pid}

    # -- a prompt whose greedy continuation has no end-of-text within the budget
    progress.step("prompt + warm-up")
    need = max(args.tokens, args.conc_tokens)
    prompt = PROMPTS[0]
    for candidate in PROMPTS:
        s, ids = await loop.run_in_executor(None, raw.generate, candidate, need)
        if s.error is None and len(ids) == need:
            prompt = candidate
            break
    n_prompt = len(raw.encode(prompt))
    await clients.ws_stream(backend.ws_url, MODEL_KEY, prompt, n_prompt, 4)  # warm-up
    progress.done()

    def count_tokens(text: str) -> int:
        return len(raw.encode(text))

    results: dict = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine(),
        "config": {"model": model_name, "swarm_dtype": args.dtype, "client_dtype": args.client_dtype,
                   "server_threads": args.server_threads or "default", "client_threads": args.client_threads
                   or "default", "tokens": args.tokens, "concurrent_tokens": args.conc_tokens,
                   "repeats": args.repeats, "prompt_tokens": n_prompt, "quick": args.quick, "tiny": args.tiny,
                   "label": args.label},
    }

    # -- single stream: raw and WebSocket interleaved, so drift hits both alike
    raw_runs, ws_runs = [], []
    meters = {"raw": CpuMeter(pids, exclude), "ws": CpuMeter(pids, exclude)}
    cpu = {"raw": {}, "ws": {}}
    for i in range(args.repeats):
        progress.step(f"single stream: raw {i + 1}/{args.repeats}")
        meters["raw"].start()
        raw_runs.append((await loop.run_in_executor(None, raw.generate, prompt, args.tokens))[0])
        _accumulate(cpu["raw"], meters["raw"].stop())
        progress.done()
        progress.step(f"single stream: websocket {i + 1}/{args.repeats}")
        meters["ws"].start()
        ws_runs.append(await clients.ws_stream(backend.ws_url, MODEL_KEY, prompt, n_prompt, args.tokens))
        _accumulate(cpu["ws"], meters["ws"].stop())
        progress.done()
    single = {"raw": single_summary(raw_runs), "websocket": single_summary(ws_runs)}
    single["raw"]["cpu_s_per_1k_tokens"] = _per_1k(cpu["raw"], raw_runs)
    single["websocket"]["cpu_s_per_1k_tokens"] = _per_1k(cpu["ws"], ws_runs)

    progress.step("single stream: HTTP")
    single["http"] = single_summary([await clients.http_generate(backend.url, MODEL_KEY, prompt, args.tokens,
                                                                 count_tokens)])
    single["http"]["note"] = "no streaming: tokens/s over the whole request; TTFT is the full answer"
    progress.done()
    progress.step("single stream: HTTP SSE")
    single["http_sse"] = single_summary([await clients.http_sse(backend.url, MODEL_KEY, prompt, args.tokens)
                                         for _ in range(max(1, args.repeats - 1))])
    progress.done()
    progress.step("single stream: OpenAI SSE")
    skipped = await clients.openai_available(backend.url)
    if skipped:
        single["openai_sse"] = {"skipped": skipped}
    else:
        single["openai_sse"] = single_summary([await clients.openai_sse(backend.url, MODEL_KEY, prompt, args.tokens)
                                               for _ in range(max(1, args.repeats - 1))])
    progress.done()
    results["single"] = single

    # -- concurrency: WebSocket chat sessions vs raw client threads
    levels = []
    for n in args.concurrency:
        tokens = args.conc_tokens if n < 64 else max(4, args.conc_tokens // 2)
        progress.step(f"concurrency {n}: websocket")
        meter = CpuMeter(pids, exclude).start()
        ws = concurrent_summary(await clients.ws_concurrent(backend.ws_url, MODEL_KEY, prompt, n_prompt, tokens, n))
        ws["cpu_s_per_1k_tokens"] = _per_1k_tokens(meter.stop(), ws["tokens"])
        progress.done()
        progress.step(f"concurrency {n}: raw threads")
        meter = CpuMeter(pids, exclude).start()
        rs = concurrent_summary(await loop.run_in_executor(None, raw.concurrent, prompt, tokens, n))
        rs["cpu_s_per_1k_tokens"] = _per_1k_tokens(meter.stop(), rs["tokens"])
        progress.done()
        levels.append({"sessions": n, "tokens_per_session": tokens, "websocket": ws, "raw": rs,
                       "ratio": ws["aggregate_tokens_per_s"] / rs["aggregate_tokens_per_s"]
                       if rs["aggregate_tokens_per_s"] else None})
    results["concurrency"] = levels

    # -- backend cost: CPU per 1,000 tokens (all WebSocket runs), RSS with idle sessions
    ws_cpu = sum(lv["websocket"]["cpu_s_per_1k_tokens"]["backend"] * lv["websocket"]["tokens"] / 1000
                 for lv in levels) + cpu["ws"].get("backend", 0.0)
    ws_tokens = sum(lv["websocket"]["tokens"] for lv in levels) + sum(s.tokens for s in ws_runs)
    idle, keep = [], []
    for count in args.idle:
        progress.step(f"idle sessions: {count}")
        errors = await clients.idle_sessions(backend.ws_url, MODEL_KEY, count - len(keep), max_len_for(n_prompt),
                                             keep)
        await asyncio.sleep(1.5)
        u = usage(backend.pid)
        idle.append({"sessions": len(keep), "errors": errors, "rss_mb": round(u.rss_mb, 1),
                     "tree_rss_mb": round(u.tree_rss_mb, 1)})
        progress.done()
    await asyncio.gather(*(c.close() for c in keep), return_exceptions=True)
    keep.clear()
    gc.collect()
    base, top = idle[0], idle[-1]
    results["backend"] = {
        "cpu_s_per_1k_tokens": ws_cpu * 1000 / ws_tokens if ws_tokens else None,
        "idle": idle,
        "mb_per_idle_session": (top["rss_mb"] - base["rss_mb"]) / (top["sessions"] - base["sessions"])
        if top["sessions"] > base["sessions"] else None,
    }

    if not args.tiny:
        progress.step("answer check")
        answer = await loop.run_in_executor(None, raw.answer, PARIS_QUESTION)
        results["answer_check"] = {"question": PARIS_QUESTION, "answer": answer, "ok": "Paris" in answer}
        progress.done()
    results["targets"] = report.targets(results)
    return results


def max_len_for(n_prompt: int) -> int:
    return n_prompt + 64


def _accumulate(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0.0) + v


def _per_1k(cpu: dict, streams: list[Stream]) -> dict:
    return _per_1k_tokens(cpu, sum(s.tokens for s in streams))


def _per_1k_tokens(cpu: dict, tokens: int) -> dict:
    return {k: (v * 1000 / tokens if tokens else None) for k, v in cpu.items()}


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
    except SystemExit as e:  # --help, argument errors
        code = e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # hivemind's P2P finalizers print tracebacks when they run at interpreter exit: skip them, but first end
    # this process's own children (the raw client's DHT process and p2pd), which would keep our pipes open
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        child.terminate()
    psutil.wait_procs(children, timeout=5)
    for child in children:
        if child.is_running():
            child.kill()
    os._exit(code)
