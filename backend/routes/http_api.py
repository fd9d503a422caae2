"""HTTP API: ``POST /api/v1/generate`` and ``GET /api/v1/models`` (chat.petals.dev compatible).

``/api/v1/generate`` takes form fields, a query string or JSON, and answers
``{"ok": true, "outputs": TEXT}``; with ``stream: true`` (an extension) it
streams Server-Sent Events of the WebSocket API's delta shape.
"""

from __future__ import annotations

import logging
import traceback

from quart import Blueprint, Response, jsonify, request

from .. import protocol
from ..errors import ApiError, NotReady, SwarmError
from ..services.generation import GenerateSpec
from . import sse
from .auth import require_api_key
from .common import client_address, state
from .forms import read_params

logger = logging.getLogger(__name__)
blueprint = Blueprint("http_api", __name__)


def _error_response(e: ApiError) -> Response:
    message = e.message
    if state().settings.debug:
        message += "\n" + traceback.format_exc()
    response = jsonify(protocol.error(message))
    response.status_code = e.status
    return response


@blueprint.get("/api/v1/models")
async def list_models():
    app_state = state()
    registry = app_state.registry
    statuses = app_state.engine.status() if app_state.engine else {}
    models = []
    for spec in registry.models:
        status = statuses.get(spec.key)
        models.append(spec.describe(ready=bool(status and status.ready),
                                    chat_template=status.chat_template if status else None,
                                    error=(status.error if status else None) or app_state.loading_error))
    return jsonify({"default": registry.default, "models": models})


@blueprint.post("/api/v1/generate")
async def generate_http():
    app_state = state()
    try:
        require_api_key(request)
        values = await read_params(request, protocol.HttpGenerateRequest)
        req = protocol.parse(protocol.HttpGenerateRequest, values)
        service = app_state.service
        if service is None:
            raise NotReady("Models are still loading, retry in a moment")
        spec = service.resolve_model(req.model, own_origin=False)  # no public_api=false models over HTTP
        gen = GenerateSpec(inputs=req.inputs, max_new_tokens=req.max_new_tokens, max_length=req.max_length,
                           sampling=req.sampling(), round_tokens=1 if req.stream else None)
        client = client_address(request)
        if req.stream:
            rounds = service.generate_once(spec, gen, client)
            first = await anext(rounds)  # errors before the first token still get a proper status

            async def events():
                try:
                    yield sse.event(protocol.delta(first.outputs, stop=first.stop, token_count=first.token_count))
                    async for r in rounds:
                        yield sse.event(protocol.delta(r.outputs, stop=r.stop, token_count=r.token_count))
                except ApiError as e:
                    yield sse.event(protocol.error(e.message))
                finally:
                    await rounds.aclose()
                yield sse.DONE

            return sse.response(events())
        text = "".join([r.outputs async for r in service.generate_once(spec, gen, client)])
        return jsonify(protocol.http_result(text))
    except ApiError as e:
        if isinstance(e, SwarmError):
            app_state.metrics.swarm_errors.inc()
        return _error_response(e)
