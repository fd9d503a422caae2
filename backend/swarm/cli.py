"""``python -m backend swarm``: run a private Petals swarm on loopback until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .launcher import LocalSwarm, SwarmError, parse_blocks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend swarm", description=__doc__)
    parser.add_argument("model", help="Local model folder (Hugging Face format).")
    parser.add_argument("--dht-prefix", default=None, help="DHT prefix (default: the folder's name).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--servers", type=int, default=1, help="Number of servers; blocks are split evenly.")
    group.add_argument("--blocks", action="append", type=parse_blocks, metavar="START:END",
                       help="Block range of one server (repeat for several servers).")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the served blocks.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="IPv4 address the servers listen on (0.0.0.0 or a LAN address lets other machines join).")
    parser.add_argument("--port", type=int, default=0, help="TCP port of the first server (0: any free port).")
    parser.add_argument("--quiet", action="store_true", help="Do not echo the servers' logs.")
    args = parser.parse_args(argv)

    from pathlib import Path

    prefix = args.dht_prefix or Path(args.model).resolve().name
    swarm = LocalSwarm(args.model, dht_prefix=prefix, blocks=args.blocks, servers=args.servers,
                       torch_dtype=args.dtype, device=args.device, host=args.host, first_port=args.port,
                       echo=not args.quiet)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        peers = swarm.start()
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("INITIAL_PEERS=" + " ".join(peers), flush=True)
    print(f"Swarm ready: {len(swarm.servers)} server(s), dht_prefix={prefix}. Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(0.5):
            if not any(s.alive for s in swarm.servers):
                print("error: every server exited", file=sys.stderr)
                return 1
    finally:
        swarm.stop()
    return 0
