"""`python -m backend swarm`: prints the initial peers once the blocks are served, and stops every
process it started (servers and their p2pd) on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(180)


def test_swarm_command_prints_peers_and_cleans_up(tiny_model):
    process = subprocess.Popen([sys.executable, "-m", "backend", "swarm", str(tiny_model), "--blocks", "0:2",
                                "--blocks", "2:4", "--dht-prefix", "cli-test", "--quiet"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        peers = None
        while time.monotonic() < deadline and peers is None:
            line = process.stdout.readline()
            assert line, "the swarm command exited early:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("INITIAL_PEERS="):
                peers = line.strip().removeprefix("INITIAL_PEERS=").split()
        assert peers and all(p.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3Koo" in p for p in peers)
        children = psutil.Process(process.pid).children(recursive=True)
        assert sum("p2pd" in c.name() for c in children) >= 2  # at least one per server
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
