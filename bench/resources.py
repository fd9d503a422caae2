"""CPU time and resident memory of a process tree (psutil)."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import psutil


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [root]


@dataclass
class Usage:
    cpu_s: float  # user + system seconds, the whole tree
    rss_mb: float  # the root process only
    tree_rss_mb: float  # root and children (e.g. its p2pd daemon)


def usage(pid: int, *, children: bool = True) -> Usage:
    cpu, rss, tree_rss = 0.0, 0.0, 0.0
    procs = _tree(pid) if children else _tree(pid)[:1]
    for i, proc in enumerate(procs):
        try:
            t = proc.cpu_times()
            mem = proc.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
        cpu += t.user + t.system
        tree_rss += mem
        if i == 0:
            rss = mem
    return Usage(cpu_s=cpu, rss_mb=rss, tree_rss_mb=tree_rss)


class CpuMeter:
    """CPU seconds spent by a few named process trees between start() and stop().

    ``exclude`` names subtrees measured on their own and subtracted from their
    ancestors' (this process starts the swarm servers: "bench" is then the raw
    client with its DHT and p2pd, without the servers).
    """

    def __init__(self, pids: dict[str, int], exclude: dict[str, int] | None = None):
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self.exclude = exclude or {}
        self._start: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        self.wall_s = 0.0

    def start(self) -> CpuMeter:
        self._t0 = time.perf_counter()
        self._start = {name: self._cpu(name, pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict[str, float]:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = {name: self._cpu(name, pid) - self._start[name] for name, pid in self.pids.items()}
        return self.cpu_s

    def _cpu(self, name: str, pid: int) -> float:
        cpu = usage(pid).cpu_s
        if name in self.exclude:
            cpu -= usage(self.exclude[name]).cpu_s
        return cpu


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu or platform.machine(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
