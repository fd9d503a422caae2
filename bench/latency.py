"""``python -m bench.latency``: time to first token and tokens/s with real network latency between hosts.

    python -m bench.latency            # SmolLM2-135M on 1, 2 and 3 hosts at 0, 20, 50, 100 ms RTT (~10 min, 2 cores)
    python -m bench.latency --tiny --rtts 40 --layouts 2 --sessions 2   # the smoke test's single case

Builds the latency rig (``bench/latency_rig.py``: hosts as network namespaces, a delaying proxy in front of each,
every layout of the blocks running at once, the app on its own host; needs root and ``ip netns``). For each RTT
it measures libp2p round trips through the proxies (this process to every server, each server's host to the next
server of its layout), then for each layout one chat stream and ``--sessions`` simultaneous chat sessions over the
app's WebSocket API (the way the page uses it), ``--tokens`` new tokens each, greedy. Writes
``OUT/latency.json`` and, for a full run with the default OUT, ``docs/latency.png`` and the README table between
the ``latency`` markers. Everything it started (namespaces, processes) is removed when it ends, fails or is
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used before the rig forks

from . import clients, latency_report  # noqa: E402
from .latency_rig import LatencyRig, ServerSpec  # noqa: E402
from .netns import unavailable_reason  # noqa: E402
from .resources import machine  # noqa: E402
from .stack import EMBEDDED_DIR, REPO  # noqa: E402
from .stats import concurrent_summary, single_summary  # noqa: E402

PROMPT = "Count to one hundred: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # greedy: keeps counting


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of the embedded SmolLM2")
    p.add_argument("--rtts", type=_ints, default=[0, 20, 50, 100], help="round-trip times between hosts, ms")
    p.add_argument("--layouts", type=_ints, default=[1, 2, 3], help="numbers of hosts the blocks are split over")
    p.add_argument("--tokens", type=int, default=24, help="new tokens per stream and per session")
    p.add_argument("--sessions", type=int, default=16, help="simultaneous sessions of the concurrent case")
    p.add_argument("--repeats", type=int, default=3, help="single streams per case (medians are reported)")
    p.add_argument("--dtype", default=None, help="the servers' block dtype (default: the embedded swarm's)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--no-docs", action="store_true", help="never write docs/latency.png or the README table")
    p.add_argument("--render", action="store_true",
                   help="measure nothing: redraw the chart and tables from OUT/latency.json")
    args = p.parse_args(argv)
    if not set(args.layouts) <= {1, 2, 3}:
        p.error("--layouts: 1, 2 or 3 hosts")
    args.docs = not args.no_docs and args.out is None and not args.tiny
    args.out = args.out or REPO / "bench" / "results"
    return args


def _default_dtype() -> str:
    from backend.engine.device import resolve_block_dtype
    from backend.settings import Settings

    return resolve_block_dtype(Settings.__dataclass_fields__["embedded_dtype"].default, "cpu")


class Progress:
    """One tqdm bar over every step, and one printed line per finished case."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.tqdm = tqdm
        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True,
                        bar_format="{desc} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def step(self, what: str) -> None:
        self.bar.set_description_str(what)

    def done(self, line: str | None = None) -> None:
        if line:
            self.tqdm.write(line, file=sys.stderr)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads((args.out / "latency.json").read_text())
        latency_report.write_all(results, args.out, REPO if not args.no_docs and not args.tiny else None)
        print(latency_report.table(results))
        return 0
    if reason := unavailable_reason():
        print(f"error: the latency rig cannot be built here: {reason}", file=sys.stderr)
        return 2
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="petals-chat-latency-"))
    if args.tiny:
        from backend.swarm.tiny_model import make_tiny_model

        model_path, model_name = make_tiny_model(tmp / "tiny-llama", EMBEDDED_DIR), "tiny random Llama (4 layers)"
    elif (EMBEDDED_DIR / "config.json").is_file():
        model_path, model_name = EMBEDDED_DIR, "SmolLM2-135M-Instruct (embedded)"
    else:
        print(f"error: the embedded model is not prepared in {EMBEDDED_DIR} (make model)", file=sys.stderr)
        return 2
    from transformers import AutoTokenizer

    prompt_tokens = len(AutoTokenizer.from_pretrained(model_path)(PROMPT)["input_ids"])
    dtype = args.dtype or _default_dtype()
    progress = Progress(2 + len(args.layouts) + len(args.rtts) * (1 + 2 * len(args.layouts)))
    progress.step(f"starting the rig: proxies, servers, the app (logs in {tmp})")
    try:
        with LatencyRig(model_path, tmp, layouts=tuple(args.layouts), dtype=dtype) as rig:
            progress.done(f"rig up in {time.time() - started:.0f} s: hosts {', '.join(rig.hosts)} + app, "
                          f"{len(rig.specs)} servers")
            results = asyncio.run(_measure(args, rig, progress, prompt_tokens))
            progress.step("traffic and listening sockets")
            results["traffic"] = rig.traffic()
            results["listening"] = {host: rig.listening(host) for host in rig.hosts}
            progress.done()
    finally:
        progress.close()
    results.update(date=dt.datetime.now().astimezone().isoformat(timespec="seconds"), machine=machine())
    results["config"] = {"model": model_name, "dtype": dtype, "tokens": args.tokens, "sessions": args.sessions,
                         "repeats": args.repeats, "rtts_ms": args.rtts, "layouts": args.layouts,
                         "prompt_tokens": prompt_tokens, "duration_s": round(time.time() - started, 1),
                         "servers": [{"hosts": s.layout, "host": s.host, "blocks": list(s.blocks)}
                                     for s in rig.specs]}
    latency_report.write_all(results, args.out, REPO if args.docs else None)
    print(latency_report.table(results))
    print(f"\nresults: {args.out / 'latency.json'}" + ("; docs/latency.png and the README table" if args.docs else ""))
    return 0


async def _measure(args, rig: LatencyRig, progress: Progress, prompt_tokens: int) -> dict:
    ws_url = rig.app_url.replace("http://", "ws://")
    for n in args.layouts:
        progress.step(f"warm-up: blocks on {n} host(s)")
        warm = await clients.ws_stream(ws_url, f"hosts{n}", PROMPT, prompt_tokens, 4)
        if warm.error:
            raise RuntimeError(f"warm-up on {n} host(s) failed: {warm.error}")
        progress.done()
    probes, cases = [], []
    for rtt in args.rtts:
        progress.step(f"RTT {rtt} ms: round trips through the proxies")
        rig.set_rtt(rtt)
        probes.append(_probe(rig, rtt))
        progress.done(f"RTT {rtt:>3} ms: libp2p round trips, client->server {probes[-1]['client_to_server_ms']} ms, "
                      f"server->server {probes[-1]['server_to_server_ms']} ms")
        for n in args.layouts:
            key = f"hosts{n}"
            progress.step(f"RTT {rtt} ms, {n} host(s): 1 stream x {args.repeats}")
            single = single_summary([await clients.ws_stream(ws_url, key, PROMPT, prompt_tokens, args.tokens)
                                     for _ in range(args.repeats)])
            progress.done()
            progress.step(f"RTT {rtt} ms, {n} host(s): {args.sessions} sessions")
            concurrent = concurrent_summary(await clients.ws_concurrent(ws_url, key, PROMPT, prompt_tokens,
                                                                        args.tokens, args.sessions))
            cases.append({"rtt_ms": rtt, "hosts": n, "single": single, "concurrent": concurrent})
            progress.done(f"RTT {rtt:>3} ms, {n} host(s): 1 stream TTFT {_f(single['ttft_ms'])} ms, "
                          f"{single['tokens_per_s']:.1f} tok/s; {args.sessions} sessions TTFT p50 "
                          f"{_f(concurrent['ttft_p50_ms'])} ms, {concurrent['aggregate_tokens_per_s']:.1f} tok/s "
                          f"in total, errors {single['errors'] + concurrent['errors']}")
    return {"probes": probes, "cases": cases}


def _probe(rig: LatencyRig, rtt: float) -> dict:
    """Median libp2p round trips: this process (on the bridge, like the app) to every server; each server's host
    to the next server of its layout (the hop of a server-to-server push)."""
    def median(samples: list[float]) -> float:
        return round(statistics.median(samples), 1)

    client = {_name(s): median(rig.probe(None, s)) for s in rig.specs}
    hops: dict[str, float] = {}
    for here, there in zip(rig.specs, rig.specs[1:], strict=False):
        if here.layout == there.layout:
            hops[f"{_name(here)} -> {_name(there)}"] = median(rig.probe(here.host, there))
    return {"rtt_ms": rtt, "client_to_server_ms": client, "server_to_server_ms": hops}


def _name(spec: ServerSpec) -> str:
    return f"{spec.key}/{spec.host}"


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Ctrl-C raises at once, also inside asyncio.run, whose own handler only cancels the main task: a client
    # library that turns that cancellation into an error it handles would let the run go on
    signal.signal(signal.SIGINT, _interrupt)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted: the rig was torn down", file=sys.stderr)
        sys.exit(130)
