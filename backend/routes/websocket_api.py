"""WebSocket API ``/api/v2/generate`` (chat.petals.dev compatible).

One connection holds at most one inference session. Every request gets an
answer; a bad request gets ``{"ok": false, "traceback": ONE_LINE}`` and the
connection stays usable. The session is closed when the connection ends,
gracefully or not (Quart cancels this handler on disconnect).
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback

from quart import Blueprint, websocket

from .. import protocol
from ..errors import ApiError, BadRequest, NotReady, SwarmError
from ..services.generation import Conversation, GenerateSpec
from .common import client_address, is_own_origin, state

logger = logging.getLogger(__name__)
blueprint = Blueprint("websocket_api", __name__)


def _decode(raw: str | bytes | None) -> dict:
    if not isinstance(raw, str):
        raise BadRequest("binary frames are not supported: send JSON text frames")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    return data


async def _send(payload: dict) -> None:
    await websocket.send(json.dumps(payload, ensure_ascii=False))


def _debug_suffix(settings) -> str:
    return "\n" + traceback.format_exc() if settings.debug else ""


@blueprint.websocket("/api/v2/generate")
async def generate_ws() -> None:
    app_state = state()
    settings = app_state.settings
    metrics = app_state.metrics
    await websocket.accept()
    metrics.requests.labels("/api/v2/generate", "101").inc()
    client = client_address(websocket)
    own_origin = is_own_origin(websocket)
    conversation: Conversation | None = None
    try:
        while True:
            try:
                raw = await asyncio.wait_for(websocket.receive(), timeout=settings.step_timeout)
            except asyncio.TimeoutError:
                await _send(protocol.error(f"Session closed: no request for {settings.step_timeout:g} seconds"))
                await websocket.close(1000, "idle timeout")
                return
            try:
                request = _decode(raw)
                kind = request.get("type")
                if kind == "open_inference_session":
                    req = protocol.parse(protocol.OpenSessionRequest, request)
                    service = app_state.service
                    if service is None:
                        raise NotReady("Models are still loading, retry in a moment")
                    spec = service.resolve_model(req.model, own_origin=own_origin)
                    if conversation is not None:  # a new session replaces the old one
                        old, conversation = conversation, None
                        await old.close()
                    conversation = await service.open(spec, req.max_length, client)
                    logger.info("ws session opened: model=%s max_length=%d", spec.key, req.max_length)
                    await _send(protocol.ok())
                elif kind == "generate":
                    if conversation is None:
                        raise BadRequest("the first request must be of type 'open_inference_session'")
                    req = protocol.parse(protocol.GenerateRequest, request)
                    spec = GenerateSpec(inputs=req.inputs, max_new_tokens=req.max_new_tokens,
                                        max_length=req.max_length, sampling=req.sampling(),
                                        stop_sequence=req.stop_sequence,
                                        extra_stop_sequences=tuple(req.extra_stop_sequences or ()),
                                        until_stop=True)
                    async for round_ in conversation.generate(spec):
                        await _send(protocol.delta(round_.outputs, stop=round_.stop, token_count=round_.token_count))
                else:
                    expected = "'generate'" if conversation else "'open_inference_session'"
                    raise BadRequest(f"unknown request type {kind!r}: expected {expected}")
            except ApiError as e:
                if isinstance(e, SwarmError):  # the session's state is unknown now: drop it
                    metrics.swarm_errors.inc()
                    if conversation is not None:
                        old, conversation = conversation, None
                        await old.close()
                        e.message += " (the inference session was closed; open a new one)"
                await _send(protocol.error(e.message + _debug_suffix(settings)))
            except Exception as e:  # a bug: log it, answer in one line, keep the connection
                logger.exception("websocket request failed")
                if conversation is not None:
                    old, conversation = conversation, None
                    await old.close()
                await _send(protocol.error(f"Internal error: {type(e).__name__}" + _debug_suffix(settings)))
    finally:
        if conversation is not None:
            await conversation.close()
