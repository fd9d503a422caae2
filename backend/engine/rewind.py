"""Rewinding a Petals client session to an earlier point of its history.

Needs every server on the session's route to take a step's ``start_from_position``
(:mod:`backend.swarm.session_rewind`, announced by its version mark), and a route of one server when the
client lets servers push to each other (Petals 2.2 pushes a step with its session's first metadata, which
would lose the field). :func:`rewind` truncates what the client holds (``output_ids``, each server session's
position and input history, replayed if a server fails later) and marks each server session so that its next
step carries the field.
"""

from __future__ import annotations

from typing import Any

from ..swarm.session_rewind import FIELD, MARK


def supported(inner: Any) -> bool:
    """Whether the Petals ``InferenceSession`` ``inner`` may be rewound now."""
    sessions = list(getattr(inner, "_server_sessions", None) or ())
    if not sessions or (len(sessions) > 1 and inner._sequence_manager.config.use_server_to_server):
        return False
    return all((session.span.server_info.version or "").endswith(MARK) for session in sessions)


def rewind(inner: Any, keep: int) -> None:
    """Keep the first ``keep`` tokens of the session (``output_ids``); the servers keep all but the last of them,
    which goes with the next input as after any generation."""
    position = keep - 1
    if not (1 <= keep <= inner.output_ids.shape[1] and position <= inner.position):
        raise ValueError(f"cannot rewind a session at {inner.position} to keep {keep} tokens")
    _install()
    inner.output_ids = inner.output_ids[:, :keep]
    inner._position = position
    for session in inner._server_sessions:
        session._position = position
        if session.history is not None:
            session.history = session.history[:, :position]
        session._rewind_to = position


def _install() -> None:
    """Server sessions send ``start_from_position`` with the first step after a rewind."""
    from hivemind import MSGPackSerializer
    from petals.client.inference_session import _ServerInferenceSession

    if getattr(_ServerInferenceSession, "_rewind_installed", False):
        return
    stock_step = _ServerInferenceSession._step

    async def _step(self, request):
        start = getattr(self, "_rewind_to", None)
        if start is not None:
            self._rewind_to = None
            metadata = MSGPackSerializer.loads(request.metadata) if request.metadata else {}
            metadata[FIELD] = start
            request.metadata = MSGPackSerializer.dumps(metadata)
        return await stock_step(self, request)

    _ServerInferenceSession._step = _step
    _ServerInferenceSession._rewind_installed = True
