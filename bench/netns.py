"""A throwaway multi-host network in Linux network namespaces, for tests and ``bench.latency`` (needs root and
``ip netns``).

``NetnsRig(["a", "b"])`` is a context manager that builds, for each named host, a network namespace with one
interface (``eth0``, a private address in a test subnet, no default route) plugged by a veth pair into a Linux bridge
that lives in a namespace of its own (the "switch"). The root namespace (the test process) is plugged into the same
bridge with the subnet's ``.1`` address, so tests reach the hosts directly; nothing else is: the hosts have no route
to any other address, so no traffic leaves the rig.

* :meth:`NetnsRig.popen` starts a process on a host (``ip netns exec``), in its own process group; it is killed when
  the test process dies (``PR_SET_PDEATHSIG``) and, with everything else on the host, when the rig is torn down.
* :meth:`NetnsRig.kill_host` crashes a host: SIGKILL to every process in its namespace.
* :meth:`NetnsRig.cut` / :meth:`NetnsRig.restore` take a host's switch port down and up (a pulled cable: packets
  are dropped silently, connections stay open on both ends).

Teardown always runs (``__exit__``, also on errors and KeyboardInterrupt, and at interpreter exit as a fallback; while
a rig built on the main thread exists, SIGTERM raises KeyboardInterrupt so that a cancelled run cleans up too):
every process in the rig's namespaces is ended, the namespaces are deleted (which deletes their interfaces and the
root's veth). If the test process is killed outright (SIGKILL), a watchdog process it started with the rig (in a
session of its own) notices (its stdin pipe closes) and does the same. Names also carry a prefix and the owning
process id (``pcmh<pid>x<n>-<host>``), so a later run removes whatever a crashed run (one whose process is gone) left.
"""

from __future__ import annotations

import atexit
import ctypes
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "pcmh"  # petals chat multi-host
SUBNETS = "10.77.0.0/16"  # the rig takes the first /24 in here that the root namespace does not use


def _ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unavailable_reason() -> str | None:
    """Why a rig cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (the ip command) is not installed"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        _ip("netns", "add", probe)
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        return f"ip netns does not work here: {e}"
    try:
        _ip("-n", probe, "link", "add", "br0", "type", "bridge")
        _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except RuntimeError as e:
        return f"bridges or veth pairs are unavailable: {e}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    return [int(pid) for pid in _ip("netns", "pids", name, check=False).split()]


def _owner_alive(name: str) -> bool:
    match = re.match(rf"{PREFIX}(\d+)", name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(names: Sequence[str], timeout: float = 10.0) -> None:
    """SIGKILL every process in these namespaces; return once none is left."""
    deadline = time.monotonic() + timeout
    while pids := [pid for name in names for pid in namespace_pids(name)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} in {list(names)} survive SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _delete(names: Sequence[str], links: Sequence[str] = ()) -> None:
    _kill_all(names)
    for name in names:
        _ip("netns", "del", name, check=False)
    for link in links:
        _ip("link", "del", link, check=False)


def cleanup_stale() -> list[str]:
    """Remove namespaces and root links left by rigs whose process is gone; return their names."""
    stale = [name for name in namespaces() if name.startswith(PREFIX) and not _owner_alive(name)]
    links = [name for name in re.findall(r"^\d+: ([^:@\s]+)", _ip("-o", "link", "show"), re.M)
             if name.startswith(PREFIX) and not _owner_alive(name)]
    _delete(stale, links)
    return stale + links


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Host:
    name: str  # the test's name for it ("a")
    netns: str  # the namespace ("pcmh1234-a")
    ip: str
    port: str  # its veth end on the switch


class NetnsRig:
    _count = itertools.count()

    def __init__(self, hosts: Sequence[str]):
        tag = f"{PREFIX}{os.getpid()}x{next(self._count)}"
        self.switch = f"{tag}-sw"
        self.root_link = tag  # the root namespace's veth end (interface names are at most 15 characters)
        self.subnet = self._free_subnet()
        addresses = self.subnet.hosts()
        self.root_ip = str(next(addresses))
        for _ in range(9):  # hosts from .11
            next(addresses)
        self.hosts = {name: Host(name, f"{tag}-{name}", str(next(addresses)), f"p-{name}"[:15]) for name in hosts}
        self.processes: dict[str, list[subprocess.Popen]] = {}  # started by popen, per host
        self._built = False
        self._sigterm_installed = False
        self._watchdog: subprocess.Popen | None = None

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = [ipaddress.ip_network(word, strict=False) for word in
                re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", _ip("-4", "route", "show", "table", "all"))]
        for subnet in ipaddress.ip_network(SUBNETS).subnets(new_prefix=24):
            if not any(subnet.overlaps(other) for other in used if other.prefixlen > 0):
                return subnet
        raise RuntimeError(f"no free /24 in {SUBNETS}")

    # -- lifecycle ----------------------------------------------------------
    def __enter__(self) -> NetnsRig:
        cleanup_stale()
        atexit.register(self.teardown)
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # SIGTERM (a CI job cancelled) would end the process without any cleanup: make it an interrupt
            signal.signal(signal.SIGTERM, _interrupt)
            self._sigterm_installed = True
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _build(self) -> None:
        self._built = True
        # the watchdog: cleans up after this process however it ends (it waits for its stdin to close)
        self._watchdog = subprocess.Popen(
            [sys.executable, __file__, "--watch", self.root_link, *self._names()], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        _ip("-n", sw, "link", "set", "br0", "up")
        prefixlen = self.subnet.prefixlen
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "link", "add", "eth0", "type", "veth", "peer", "name", host.port, "netns", sw)
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/{prefixlen}", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", sw, "link", "set", host.port, "master", "br0", "up")
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "p-root", "netns", sw)
        _ip("-n", sw, "link", "set", "p-root", "master", "br0", "up")
        _ip("addr", "add", f"{self.root_ip}/{prefixlen}", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")

    def teardown(self, grace: float = 5.0) -> None:
        """End every process on the rig (SIGTERM to those it started, SIGKILL to anything left after ``grace``
        seconds) and delete its namespaces and links. Idempotent."""
        if not self._built:
            return
        self._built = False
        atexit.unregister(self.teardown)
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._sigterm_installed = False
        names = self._names()
        try:
            self._terminate([p for started in self.processes.values() for p in started], grace)
        finally:
            _delete(names, [self.root_link])
            for started in self.processes.values():
                for process in started:
                    process.wait(timeout=10)  # reap: every process in the namespaces is gone
            if self._watchdog is not None:
                self._watchdog.stdin.close()
                self._watchdog.wait(timeout=30)
                self._watchdog = None

    def _names(self) -> list[str]:
        return [host.netns for host in self.hosts.values()] + [self.switch]

    @staticmethod
    def _terminate(processes: Sequence[subprocess.Popen], grace: float) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    # -- hosts --------------------------------------------------------------
    def popen(self, host: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` on ``host`` in a new process group that dies with the test process.

        Call it from the main thread (or another thread that lives as long as the process should): the kernel's
        parent-death signal fires when the thread that started the process ends."""
        process = subprocess.Popen(["ip", "netns", "exec", self.hosts[host].netns, *argv], start_new_session=True,
                                   preexec_fn=_die_with_parent, **kwargs)
        self.processes.setdefault(host, []).append(process)
        return process

    def pids(self, host: str) -> list[int]:
        return namespace_pids(self.hosts[host].netns)

    def kill_host(self, host: str) -> None:
        """A crash: SIGKILL every process on ``host``; returns once none is left."""
        _kill_all([self.hosts[host].netns])
        for process in self.processes.pop(host, []):
            process.wait(timeout=10)

    def stop_host(self, host: str, grace: float = 15.0) -> None:
        """A clean shutdown: SIGTERM to the processes started on ``host``, SIGKILL to anything left after
        ``grace`` seconds; returns once nothing runs there."""
        self._terminate(self.processes.get(host, []), grace)
        self.kill_host(host)

    def cut(self, host: str) -> None:
        """Pull ``host``'s cable: its switch port goes down, packets to and from it are dropped."""
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def restore(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[host].port, "up")


if __name__ == "__main__" and sys.argv[1:2] == ["--watch"]:  # the watchdog: python netns.py --watch LINK NETNS...
    sys.stdin.buffer.read()  # returns when the rig's process closes the pipe, or dies
    _delete(sys.argv[3:], [sys.argv[2]])
