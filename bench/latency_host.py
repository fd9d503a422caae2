"""One Petals server on a host of the latency rig, reachable only through that host's delaying proxy.

Runs inside the host's network namespace (``bench.latency_rig`` starts it there)::

    python -m bench.latency_host MODEL --blocks 0:15 --port 31011 --announce 10.77.0.11:41011 --dht-prefix P \
        [--initial-peers MADDR ...]

The server listens on ``127.0.0.1:PORT`` only, so no other host can reach it but through the proxy at
``--announce``, which is the address it announces (Petals' ``--announce_maddrs``) and prints on its
``INITIAL_PEERS=`` line. Otherwise it is ``python -m backend swarm`` (the same launcher, flags and shutdown).
"""

from __future__ import annotations

import argparse
import sys

from backend.swarm.cache_size import server_flags
from backend.swarm.cli import parse_peers, run
from backend.swarm.launcher import LocalSwarm, parse_blocks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_host", description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--blocks", required=True, type=parse_blocks, metavar="START:END")
    parser.add_argument("--port", required=True, type=int, help="the server's port on 127.0.0.1")
    parser.add_argument("--announce", required=True, metavar="IP:PORT", help="the proxy in front of it")
    parser.add_argument("--dht-prefix", required=True)
    parser.add_argument("--initial-peers", nargs="+", default=[], metavar="MADDR")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cache-tokens", type=int, default=4096)
    args = parser.parse_args(argv)
    ip, port = args.announce.rsplit(":", 1)
    join = parse_peers(args.initial_peers)
    extra = server_flags(batching=True, max_batch=64, cache_tokens=args.cache_tokens)
    swarm = LocalSwarm(args.model, dht_prefix=args.dht_prefix, blocks=[args.blocks], torch_dtype=args.dtype,
                       host="127.0.0.1", first_port=args.port, echo=True, initial_peers=join,
                       extra_args=[*extra, "--announce_maddrs", f"/ip4/{ip}/tcp/{int(port)}"])
    return run(swarm, args.dht_prefix, join)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
