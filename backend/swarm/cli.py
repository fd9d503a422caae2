"""``python -m backend swarm``: run Petals servers for a model until Ctrl-C / SIGTERM.

Without ``--initial-peers`` the servers start a new private swarm; with it they
join an existing swarm (e.g. one started by ``python -m backend swarm`` or
``make run`` on another machine) through the given multiaddrs, and serve the
blocks chosen with ``--blocks``. Either way the command waits until every block
of its servers is announced, prints ``INITIAL_PEERS=`` with its own servers'
multiaddrs (any of them lets clients and further servers in), and stops every
process it started, p2pd included, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading

from .cache_size import server_flags
from .launcher import LocalSwarm, SwarmError, parse_blocks


def parse_peers(values: list[str] | None) -> list[str]:
    """Multiaddrs given as separate arguments and/or space- or comma-separated in one."""
    peers = [part for value in values or () for part in re.split(r"[\s,]+", value.strip()) if part]
    for peer in peers:
        if not (peer.startswith("/") and "/p2p/" in peer):
            raise ValueError(f"{peer!r} is not a peer multiaddr (expected e.g. /ip4/10.0.0.2/tcp/31337/p2p/12D3Koo...)")
    return peers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend swarm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Local model folder (Hugging Face format).")
    parser.add_argument("--dht-prefix", default=None,
                        help="DHT prefix (default: the folder's name); must match the swarm's when joining one.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--servers", type=int, default=1, help="Number of servers; blocks are split evenly.")
    group.add_argument("--blocks", action="append", type=parse_blocks, metavar="START:END",
                       help="Block range of one server (repeat for several servers).")
    parser.add_argument("--initial-peers", nargs="+", metavar="MADDR",
                        help="Join an existing swarm through these multiaddrs (as printed by its INITIAL_PEERS= "
                             "line) instead of starting a new one.")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the served blocks.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="IPv4 address the servers listen on (0.0.0.0 or a LAN address lets other machines join).")
    parser.add_argument("--port", type=int, default=0, help="TCP port of the first server (0: any free port).")
    parser.add_argument("--no-batching", action="store_true",
                        help="Stock Petals: run each session's decode step alone (default: batch waiting sessions).")
    parser.add_argument("--max-batch-sessions", type=int, default=64,
                        help="Most sessions' decode steps run as one forward (default 64).")
    parser.add_argument("--cache-tokens", type=int, default=0,
                        help="Attention cache per server, in tokens per block (default: Petals' own, 16384 for "
                             "grouped-query models).")
    parser.add_argument("--quiet", action="store_true", help="Do not echo the servers' logs.")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_batch_sessions < 1 or args.cache_tokens < 0:
        parser.error("--max-batch-sessions must be at least 1 and --cache-tokens at least 0")
    try:
        join = parse_peers(args.initial_peers)
    except ValueError as e:
        parser.error(f"argument --initial-peers: {e}")

    from pathlib import Path

    prefix = args.dht_prefix or Path(args.model).resolve().name
    swarm = LocalSwarm(args.model, dht_prefix=prefix, blocks=args.blocks, servers=args.servers,
                       torch_dtype=args.dtype, device=args.device, host=args.host, first_port=args.port,
                       echo=not args.quiet, initial_peers=join,
                       extra_args=server_flags(batching=not args.no_batching, max_batch=args.max_batch_sessions,
                                               cache_tokens=args.cache_tokens))
    return run(swarm, prefix, join)


def run(swarm: LocalSwarm, prefix: str, join: list[str]) -> int:
    """Start the swarm, print its peers, serve until Ctrl-C / SIGTERM or until every server has exited."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        peers = swarm.start()
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("INITIAL_PEERS=" + " ".join(peers), flush=True)
    blocks = ", ".join(f"{start}:{end}" for start, end in swarm.blocks)
    how = f"joined the swarm at {' '.join(join)}" if join else "a new swarm"
    print(f"Swarm ready: {len(swarm.servers)} server(s) serving blocks {blocks}, dht_prefix={prefix}, {how}. "
          "Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            if not any(s.alive for s in swarm.servers):
                print("error: every server exited", file=sys.stderr)
                return 1
    finally:
        swarm.stop()
    return 0
