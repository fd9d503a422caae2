"""Start and stop a private Petals swarm on loopback.

:class:`LocalSwarm` starts one or more Petals server processes (through
``backend.swarm.server_main``, which applies the hivemind bridge), each serving
a block range of one model. The first server starts a new swarm, or joins an
existing one through ``initial_peers`` (e.g. a swarm on another machine); the
others join through it. :meth:`LocalSwarm.start` returns once every server has
loaded and announced its blocks, with the multiaddrs that clients pass as
initial peers.
Every server runs in its own process group, so :meth:`LocalSwarm.stop` also
ends the ``p2pd`` daemons they spawned; servers also die with their parent.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .server_main import READY_MARKER

_MADDR = re.compile(r"(/ip4/[0-9.]+/tcp/\d+/p2p/[1-9A-HJ-NP-Za-km-z]+)")
_REPO_ROOT = Path(__file__).resolve().parents[2]


class SwarmError(RuntimeError):
    """A server failed to start; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def split_blocks(num_blocks: int, servers: int) -> list[tuple[int, int]]:
    """Split ``range(num_blocks)`` into ``servers`` contiguous, nearly equal ranges."""
    if not 1 <= servers <= num_blocks:
        raise ValueError(f"cannot split {num_blocks} blocks between {servers} servers")
    bounds = [round(i * num_blocks / servers) for i in range(servers + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(servers)]


def parse_blocks(text: str) -> tuple[int, int]:
    """``"0:15"`` -> ``(0, 15)``."""
    try:
        start, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"block range {text!r} must look like START:END") from None
    if not 0 <= start < end:
        raise ValueError(f"block range {text!r} is empty")
    return start, end


def model_num_blocks(model_path: str | Path) -> int:
    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config["num_hidden_layers"])


@dataclass
class ServerProcess:
    blocks: tuple[int, int]
    port: int
    process: subprocess.Popen
    log_tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=60))
    maddrs: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's whole process group (the server and its p2pd)."""
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


class LocalSwarm:
    def __init__(self, model_path: str | Path, *, dht_prefix: str, blocks: Sequence[tuple[int, int]] | None = None,
                 servers: int = 1, torch_dtype: str = "float32", device: str = "cpu", host: str = "127.0.0.1",
                 first_port: int = 0, log_file: str | Path | None = None, echo: bool = False,
                 extra_args: Sequence[str] = (), initial_peers: Sequence[str] = ()):
        self.model_path = str(model_path)
        self.dht_prefix = dht_prefix
        self.blocks = list(blocks) if blocks else split_blocks(model_num_blocks(model_path), servers)
        self.torch_dtype = torch_dtype
        self.device = device
        self.host = host
        self.first_port = first_port
        self.log_file = open(log_file, "a", buffering=1) if log_file else None
        self.echo = echo
        self.extra_args = list(extra_args)
        self.servers: list[ServerProcess] = []
        self.join_peers = list(initial_peers)  # an existing swarm to join (empty: start a new one)
        self.initial_peers: list[str] = []  # our first server's multiaddrs, once it is up

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> LocalSwarm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 300.0) -> list[str]:
        """Start every server; return the initial peers once all blocks are served."""
        try:
            for index, blocks in enumerate(self.blocks):
                port = self.first_port if (index == 0 and self.first_port) else free_port(self.host)
                server = self.add_server(blocks, port=port, wait=False)
                if index == 0:  # the others join through the first server's address
                    self._wait(server, timeout, need_maddr=True)
                    self.initial_peers = list(server.maddrs)
            for server in self.servers:
                self._wait(server, timeout)
        except BaseException:
            self.stop()
            raise
        return self.initial_peers

    def add_server(self, blocks: tuple[int, int], *, port: int | None = None, wait: bool = True,
                   timeout: float = 300.0) -> ServerProcess:
        """Start one more server (e.g. a replacement) for ``blocks``; it joins the existing swarm.

        Call it from a long-lived thread: the server asks the kernel to end it when the thread that started it
        ends (``PR_SET_PDEATHSIG``), so a server started from, e.g., ``asyncio.to_thread`` dies with that thread.
        """
        port = port or free_port(self.host)
        args = [sys.executable, "-m", "backend.swarm.server_main", self.model_path,
                "--dht_prefix", self.dht_prefix,
                "--host_maddrs", f"/ip4/{self.host}/tcp/{port}",
                "--block_indices", f"{blocks[0]}:{blocks[1]}",
                "--throughput", "1",  # a number skips the network speed test (no internet here)
                "--torch_dtype", self.torch_dtype,
                "--device", self.device,
                *self.extra_args]
        # join through any live server (the first one may be gone by now, e.g. a replacement's predecessor)
        peers = ([maddr for other in self.servers if other.alive for maddr in other.maddrs] or self.initial_peers
                 or self.join_peers)
        args += ["--initial_peers", *peers] if peers else ["--new_swarm"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=str(_REPO_ROOT), start_new_session=True, text=True, bufsize=1)
        server = ServerProcess(blocks=blocks, port=port, process=process)
        self.servers.append(server)
        threading.Thread(target=self._read_log, args=(server,), daemon=True,
                         name=f"swarm-log-{port}").start()
        if wait:
            self._wait(server, timeout)
        return server

    def stop(self, grace: float = 10.0) -> None:
        """Stop every server and its p2pd: SIGTERM, then SIGKILL after ``grace`` seconds."""
        for server in self.servers:
            if server.alive:
                server.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for server in self.servers:
            try:
                server.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            server.kill(signal.SIGKILL)  # the group: leftover p2pd too
            try:
                server.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.log_file:
            self.log_file.close()
            self.log_file = None

    # -- internals ----------------------------------------------------------
    def _read_log(self, server: ServerProcess) -> None:
        assert server.process.stdout is not None
        for line in server.process.stdout:
            line = line.rstrip("\n")
            server.log_tail.append(line)
            if self.log_file:
                try:
                    self.log_file.write(f"[server :{server.port}] {line}\n")
                except ValueError:  # closed during shutdown
                    pass
            if self.echo:
                print(f"[server :{server.port}] {line}", file=sys.stderr, flush=True)
            if "Running a server on" in line:
                server.maddrs = _MADDR.findall(line)
            if READY_MARKER in line:
                server.ready.set()
        server.exited.set()

    def _wait(self, server: ServerProcess, timeout: float, need_maddr: bool = False) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (server.maddrs if need_maddr else server.ready.is_set()):
                return
            if server.exited.is_set() or not server.alive:
                raise SwarmError(f"Petals server for blocks {server.blocks} exited with code "
                                 f"{server.process.poll()}:\n" + "\n".join(server.log_tail))
            time.sleep(0.1)
        raise SwarmError(f"Petals server for blocks {server.blocks} did not become ready in {timeout:.0f} s:\n"
                         + "\n".join(server.log_tail))
