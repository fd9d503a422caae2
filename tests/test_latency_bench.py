"""``python -m bench.latency`` on the tiny model, one case (blocks on 2 hosts, 40 ms RTT), and interrupted early.

Checks what the benchmark's numbers rest on: every path between hosts crosses a delaying proxy (the servers listen
on loopback only; the proxy in front of the second host carried the client's and the first server's traffic), the
libp2p round trips measured through the proxies are the configured RTT, and the rig is gone afterwards, also after
Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import REPO, poll_until
from netns import PREFIX, namespaces, unavailable_reason

_UNAVAILABLE = unavailable_reason()
pytestmark = [pytest.mark.skipif(_UNAVAILABLE is not None, reason=f"latency rig: {_UNAVAILABLE}"),
              pytest.mark.timeout(240)]
RTT = 40
ARGS = ["--tiny", "--rtts", str(RTT), "--layouts", "2", "--sessions", "2", "--tokens", "6", "--repeats", "1"]


def _bench(out, args=ARGS, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.latency", *args, "--out", str(out)], cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _left_by(pid: int) -> list[str]:
    return [name for name in namespaces() if name.startswith(f"{PREFIX}{pid}x")]


def test_one_case_through_the_proxies(tmp_path):
    bench = _bench(tmp_path)
    output, _ = bench.communicate(timeout=200)
    assert bench.returncode == 0, output[-4000:]
    assert not _left_by(bench.pid)
    r = json.loads((tmp_path / "latency.json").read_text())

    (case,) = r["cases"]
    assert (case["rtt_ms"], case["hosts"]) == (RTT, 2)
    single, concurrent = case["single"], case["concurrent"]
    assert single["errors"] == concurrent["errors"] == 0, (single["error_messages"], concurrent["error_messages"])
    assert single["tokens"] > 0 and concurrent["tokens"] > 0
    assert single["ttft_ms"] >= RTT and single["itl_p50_ms"] >= RTT  # a token crosses at least one round trip

    (probe,) = r["probes"]
    assert set(probe["client_to_server_ms"]) == {"hosts2/a", "hosts2/b"}
    assert set(probe["server_to_server_ms"]) == {"hosts2/a -> hosts2/b"}
    for rtt in [*probe["client_to_server_ms"].values(), *probe["server_to_server_ms"].values()]:
        assert RTT <= rtt < 2 * RTT, probe  # one proxy on the path, not two

    # nothing but the proxies listens on a host's address; the servers only on its loopback
    a, b = ({s["host"]: s for s in r["config"]["servers"]}[h] for h in "ab")
    assert a["blocks"] == [0, 2] and b["blocks"] == [2, 4]
    for listening in r["listening"].values():
        assert listening and all(addr.startswith(("127.0.0.1:", "10.77.")) for addr in listening), listening
        assert sum(not addr.startswith("127.0.0.1:") for addr in listening) == 1, listening  # the proxy
    # the proxy in front of b carried the client's traffic and a's (server to server, DHT)
    (route,) = r["traffic"]["b"].values()
    assert route["app"]["bytes_in"] > 1000 and route["a"]["bytes_in"] > 1000, route


def test_interrupted_run_leaves_nothing(tmp_path):
    """Ctrl-C once the rig is up (proxies, servers and the app running in the namespaces, measuring): everything
    is gone afterwards. The run asks for 200 tokens per stream, so it is still measuring when the Ctrl-C comes."""
    bench = _bench(tmp_path, [*ARGS[:ARGS.index("--tokens")], "--tokens", "200", "--repeats", "1"])
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(lambda: bench.stdout.read(1), "")), daemon=True)
    reader.start()
    try:
        def rig_up():
            if bench.poll() is not None:
                raise AssertionError("the benchmark ended early:\n" + "".join(output)[-3000:])
            return "rig up in" in "".join(output) and len(_left_by(bench.pid)) >= 3
        poll_until(rig_up, 120, "the rig to be up")
        bench.send_signal(signal.SIGINT)
        bench.wait(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        reader.join(timeout=10)
    text = "".join(output)
    assert bench.returncode == 130, text[-3000:]
    assert "interrupted" in text
    assert not _left_by(bench.pid)
    assert not (tmp_path / "latency.json").exists()
