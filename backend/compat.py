"""Make petals 2.2 import on hivemind 1.1.12.

petals 2.2.0 imports many names from the top of ``hivemind`` (``from hivemind
import PeerID, get_logger, MSGPackSerializer, ...``). hivemind 1.1.10 re-exported
them there; 1.1.12 (the only release whose Linux wheel ships a working ``p2pd``)
no longer does, so ``import petals`` fails with
``ImportError: cannot import name 'PeerID' from 'hivemind'``.

:func:`apply` publishes the public names of ``hivemind.utils.*``,
``hivemind.p2p`` and ``hivemind.compression`` on ``hivemind`` and
``hivemind.utils`` (without overwriting anything already there). Every entry
point that may import petals (the web app's engine, the swarm server wrapper,
tests, benchmarks) calls it first. It is idempotent and cheap after the first
call.
"""

from __future__ import annotations

import importlib
import pkgutil

_applied = False

_SOURCES = ("hivemind.p2p", "hivemind.compression")


def _public_names(module) -> dict[str, object]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return {n: getattr(module, n) for n in names if hasattr(module, n)}


def apply() -> None:
    """Publish hivemind's submodule names where petals 2.2 expects them."""
    global _applied
    if _applied:
        return
    import hivemind
    import hivemind.utils

    modules = [importlib.import_module(name) for name in _SOURCES]
    for info in pkgutil.iter_modules(hivemind.utils.__path__):
        modules.append(importlib.import_module(f"hivemind.utils.{info.name}"))

    for module in modules:
        for name, value in _public_names(module).items():
            if isinstance(value, type(hivemind)):  # skip re-exported modules (os, torch, ...)
                continue
            for target in (hivemind, hivemind.utils):
                if not hasattr(target, name):
                    setattr(target, name, value)
    _applied = True


def import_petals():
    """Apply the bridge, then import and return the ``petals`` package."""
    apply()
    return importlib.import_module("petals")
