"""Hosts with real latency between them: network namespaces (``bench/netns.py``), a delaying proxy in front of every
host (``bench/delay_proxy.py``), Petals servers behind the proxies, and the app on a host of its own.

Every layout of the model (its blocks on 1, 2 or 3 hosts) runs at once, each under its own DHT prefix and app model
key (``hosts1``, ``hosts2``, ``hosts3``), all in one DHT: layout N puts block range i of ``split_blocks(blocks, N)`` on
host ``"abc"[i]``. A server listens on ``127.0.0.1`` of its host only and announces its host's proxy, which forwards
to it: whatever reaches a server from another host (the app's client, another server's pushes, DHT calls) crossed a
proxy, and each connection crosses exactly one (the one in front of the host it was dialled to). So with the proxies'
one-way delay at RTT / 2, every pair of hosts is RTT apart, and processes on one host talk without delay.
:meth:`LatencyRig.set_rtt` changes it on live connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from backend.swarm.launcher import model_num_blocks, split_blocks

from .delay_proxy import parse_route
from .latency_probe import round_trips_ms
from .netns import NetnsRig

REPO = Path(__file__).resolve().parent.parent
SERVER_HOSTS = "abc"
APP_HOST = "app"
APP_PORT = 5000
REGISTRY_ENTRY = """
[[families.models]]
key = "{key}"
[families.models.backend]
repository = "{path}"
dht_prefix = "{prefix}"
[families.models.chat]
max_session_length = 2048
"""


@dataclass(frozen=True)
class ServerSpec:
    layout: int  # on how many hosts this layout's blocks are
    host: str
    blocks: tuple[int, int]
    port: int  # on the host's 127.0.0.1
    proxy_port: int  # on the host's address

    @property
    def key(self) -> str:
        return f"hosts{self.layout}"


def plan(num_blocks: int, layouts: tuple[int, ...]) -> list[ServerSpec]:
    return [ServerSpec(n, SERVER_HOSTS[i], blocks, 31000 + 10 * n + i, 41000 + 10 * n + i)
            for n in layouts for i, blocks in enumerate(split_blocks(num_blocks, n))]


@dataclass
class Process:
    """A process on a rig host whose output is kept, line by line, and copied to a log file."""

    process: subprocess.Popen
    log: Path
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True, name=f"log-{self.log.name}").start()

    def _read(self) -> None:
        with open(self.log, "a") as log:
            for line in self.process.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def wait_for(self, prefix: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.startswith(prefix):
                    return line.strip().removeprefix(prefix)
            if self.process.poll() is not None:
                raise RuntimeError(f"{what} exited with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"{what}: nothing after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "".join(self.lines[-n:])


class LatencyRig:
    def __init__(self, model_path: Path, log_dir: Path, *, layouts: tuple[int, ...] = (1, 2, 3),
                 dtype: str = "float32", app_env: dict[str, str] | None = None):
        self.model_path, self.log_dir, self.dtype = Path(model_path), Path(log_dir), dtype
        self.layouts = layouts
        self.specs = plan(model_num_blocks(model_path), layouts)
        self.hosts = sorted({s.host for s in self.specs})
        self.app_env = app_env or {}
        self.prefix = f"latency{os.getpid()}"
        self.net = NetnsRig([*self.hosts, APP_HOST])
        self.proxies: dict[str, subprocess.Popen] = {}
        self.servers: dict[ServerSpec, Process] = {}
        self.app: Process | None = None
        self.rtt_ms = 0.0

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> LatencyRig:
        self.net.__enter__()
        try:
            self._start_proxies()
            self._start_servers()
            self._start_app()
        except BaseException:
            self.net.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.net.teardown()

    def ip(self, host: str) -> str:
        return self.net.hosts[host].ip

    @property
    def app_url(self) -> str:
        return f"http://{self.ip(APP_HOST)}:{APP_PORT}"

    def _popen(self, host: str, argv: list[str], name: str, **kwargs) -> Process:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               **kwargs.pop("env", {})}
        process = self.net.popen(host, argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, **kwargs)
        return Process(process, self.log_dir / f"{name}.log")

    def _start_proxies(self) -> None:
        for host in self.hosts:
            routes = [f"{self.ip(host)}:{s.proxy_port}=127.0.0.1:{s.port}" for s in self.specs if s.host == host]
            for route in routes:
                parse_route(route)
            proxy = self.net.popen(host, [sys.executable, "-m", "bench.delay_proxy", *(
                arg for route in routes for arg in ("--route", route))], cwd=REPO, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True)
            ready = proxy.stdout.readline()
            if not ready.startswith("ready"):
                raise RuntimeError(f"the proxy on {host} did not start: {ready!r}")
            self.proxies[host] = proxy

    def _server(self, spec: ServerSpec, join: list[str]) -> Process:
        argv = [sys.executable, "-m", "bench.latency_host", str(self.model_path),
                "--blocks", f"{spec.blocks[0]}:{spec.blocks[1]}", "--port", str(spec.port),
                "--announce", f"{self.ip(spec.host)}:{spec.proxy_port}", "--dht-prefix", f"{self.prefix}-{spec.key}",
                "--dtype", self.dtype]
        if join:
            argv += ["--initial-peers", *join]
        return self._popen(spec.host, argv, f"server-{spec.key}-{spec.host}")

    def _start_servers(self, timeout: float = 300) -> None:
        """The first server starts the DHT; every other joins through it, all at once."""
        first, *others = self.specs
        self.servers[first] = self._server(first, [])
        self.peers = self.servers[first].wait_for("INITIAL_PEERS=", timeout, f"server {first}").split()
        for spec in others:
            self.servers[spec] = self._server(spec, self.peers)
        for spec in others:
            self.servers[spec].wait_for("INITIAL_PEERS=", timeout, f"server {spec}")

    def _start_app(self, timeout: float = 300) -> None:
        registry = self.log_dir / "models.toml"
        registry.write_text(f'default = "{self.specs[0].key}"\n\n[[families]]\nname = "Latency"\n' + "".join(
            REGISTRY_ENTRY.format(key=f"hosts{n}", path=self.model_path, prefix=f"{self.prefix}-hosts{n}")
            for n in self.layouts))
        env = {"PETALS_CHAT_HOST": self.ip(APP_HOST), "PETALS_CHAT_PORT": str(APP_PORT),
               "PETALS_CHAT_DEVICE": "cpu", "PETALS_CHAT_INITIAL_PEERS": " ".join(self.peers),
               "PETALS_CHAT_MODELS": str(registry), "PETALS_CHAT_LOG_LEVEL": "warning",
               # every benchmark session comes from one address: lift the per-client limits
               "PETALS_CHAT_MAX_SESSIONS": "1000", "PETALS_CHAT_MAX_SESSIONS_PER_CLIENT": "1000",
               "PETALS_CHAT_MAX_IDLE_SESSIONS_PER_CLIENT": "1000", "PETALS_CHAT_MAX_TOKENS_PER_CLIENT": "10000000",
               "PETALS_CHAT_MAX_CONCURRENT_GENERATIONS": "128", **self.app_env}
        self.app = self._popen(APP_HOST, [sys.executable, "-m", "backend"], "app", env=env)
        deadline = time.monotonic() + timeout
        while not self._all_ready():
            if self.app.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not get ready (exit code {self.app.process.poll()}):\n"
                                   f"{self.app.tail()}")
            time.sleep(0.5)

    def _all_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.app_url + "/readyz", timeout=15) as r:
                models = json.loads(r.read())["models"]
        except (OSError, ValueError):
            return False
        return all(models.get(f"hosts{n}", {}).get("swarm_ok") for n in self.layouts)

    # -- the network --------------------------------------------------------
    def set_rtt(self, rtt_ms: float) -> None:
        """Every pair of hosts ``rtt_ms`` apart from now on (live connections included)."""
        for host, proxy in self.proxies.items():
            proxy.stdin.write(f"delay {rtt_ms / 2}\n")
            proxy.stdin.flush()
            if (answer := proxy.stdout.readline()) != "ok\n":
                raise RuntimeError(f"the proxy on {host} answered {answer!r}")
        self.rtt_ms = rtt_ms

    def traffic(self) -> dict[str, dict]:
        """Per host: bytes through its proxy, per route and per sending host (by name)."""
        names = {self.ip(h): h for h in self.net.hosts} | {self.net.root_ip: "bench"}
        out = {}
        for host, proxy in self.proxies.items():
            proxy.stdin.write("stats\n")
            proxy.stdin.flush()
            routes = json.loads(proxy.stdout.readline())
            out[host] = {route: {names.get(peer, peer): counts for peer, counts in peers.items()}
                         for route, peers in routes.items()}
        return out

    def probe(self, source: str | None, spec: ServerSpec, count: int = 5) -> list[float]:
        """Round trips (ms) from ``source`` (a host; None: this process, on the bridge like the app host) to the
        server of ``spec``, through its proxy, as libp2p sees them."""
        address = (self.ip(spec.host), spec.proxy_port)
        if source is None:
            return round_trips_ms(*address, count)
        probe = self.net.popen(source, [sys.executable, "-m", "bench.latency_probe", *map(str, address),
                                        "--count", str(count)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        out, _ = probe.communicate(timeout=60)
        if probe.returncode:
            raise RuntimeError(f"probe from {source} to {address} failed")
        return json.loads(out)

    def listening(self, host: str) -> list[str]:
        """The TCP addresses something listens on in ``host``'s namespace."""
        ss = self.net.popen(host, ["ss", "-ltnH"], stdout=subprocess.PIPE, text=True)
        out, _ = ss.communicate(timeout=30)
        return sorted(line.split()[3] for line in out.splitlines() if line.strip())
