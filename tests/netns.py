"""The multi-host rig, as the tests import it (``from netns import NetnsRig``); it lives in ``bench/netns.py``
because ``python -m bench.latency`` builds the same network."""

from bench.netns import (
    PREFIX,
    SUBNETS,
    Host,
    NetnsRig,
    _ip,
    cleanup_stale,
    namespaces,
    unavailable_reason,
)

__all__ = ["PREFIX", "SUBNETS", "Host", "NetnsRig", "_ip", "cleanup_stale", "namespaces",
    "unavailable_reason"]
