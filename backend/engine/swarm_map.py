"""The swarm as its DHT announces it: which servers hold which blocks of a model, and a session's route.

Pure functions over what Petals hands out (``RemoteModuleInfo`` per block, ``_ServerInferenceSession``
spans), so they are tested without a swarm. :meth:`PetalsEngine.swarm` reads the DHT off the event loop
and passes the result here.
"""

from __future__ import annotations

from typing import Any

STATES = {0: "offline", 1: "joining", 2: "online"}  # petals.data_structures.ServerState values


def short_peer_id(peer_id: str) -> str:
    """The last six characters of a peer id, as Petals' health monitor shows them (``...Xy12ab``)."""
    return "..." + peer_id[-6:] if len(peer_id) > 8 else peer_id


def _state(server_info: Any) -> str:
    state = getattr(server_info, "state", None)
    value = getattr(state, "value", state)
    return STATES.get(value, "offline")


def _number(value: Any) -> float | None:
    return None if value is None else round(float(value), 2)


def servers_of(infos: list[Any]) -> list[dict[str, Any]]:
    """One entry per server announced for these blocks (``infos[i]`` is block i's ``RemoteModuleInfo`` or None).

    A server's ``start``/``end`` (end exclusive) are the blocks it was seen on; ``spans`` lists them as
    contiguous ranges (normally one). Sorted by first block, then peer id.
    """
    seen: dict[str, dict[str, Any]] = {}
    blocks: dict[str, list[int]] = {}
    for index, info in enumerate(infos):
        for peer, server in (getattr(info, "servers", None) or {}).items():
            peer_id = str(peer)
            blocks.setdefault(peer_id, []).append(index)
            if peer_id not in seen:
                seen[peer_id] = _describe(peer_id, server)
    out = []
    for peer_id, entry in seen.items():
        spans = _ranges(blocks[peer_id])
        out.append({**entry, "start": spans[0][0], "end": spans[-1][1], "spans": spans})
    return sorted(out, key=lambda s: (s["start"], s["end"], s["peer_id"]))


def _describe(peer_id: str, server: Any) -> dict[str, Any]:
    cache = getattr(server, "cache_tokens_left", None)
    return {
        "peer_id": peer_id,
        "short_id": short_peer_id(peer_id),
        "state": _state(server),
        "throughput": _number(getattr(server, "throughput", None)),
        "inference_rps": _number(getattr(server, "inference_rps", None)),
        "cache_tokens_left": None if cache is None else int(cache),
        "version": getattr(server, "version", None),
        "public_name": getattr(server, "public_name", None),
        "torch_dtype": getattr(server, "torch_dtype", None),
        "using_relay": getattr(server, "using_relay", None),
    }


def _ranges(indices: list[int]) -> list[list[int]]:
    """Sorted block indices as ``[start, end)`` ranges: [0, 1, 2, 5] -> [[0, 3], [5, 6]]."""
    ranges: list[list[int]] = []
    for i in sorted(set(indices)):
        if ranges and ranges[-1][1] == i:
            ranges[-1][1] = i + 1
        else:
            ranges.append([i, i + 1])
    return ranges


def swarm_summary(model_key: str, infos: list[Any]) -> dict[str, Any]:
    """The ``GET /api/v1/swarm`` body for one model: its servers and how many blocks are covered."""
    servers = servers_of(infos)
    online = [s for s in servers if s["state"] == "online"]
    covered = sum(1 for i in range(len(infos)) if any(a <= i < b for s in online for a, b in s["spans"]))
    return {"model": model_key, "blocks_total": len(infos), "blocks_served": covered,
            "swarm_ok": covered == len(infos) and bool(infos), "servers": servers}


def route_of(server_sessions: list[Any]) -> list[dict[str, Any]]:
    """A Petals inference session's route: ``{"peer_id", "start", "end"}`` per server, in block order."""
    route = []
    for server_session in server_sessions:
        span = server_session.span
        route.append({"peer_id": str(span.peer_id), "start": int(span.start), "end": int(span.end)})
    return route
