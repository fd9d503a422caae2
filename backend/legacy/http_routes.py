"""HTTP API: ``POST /api/v1/generate`` and ``GET /api/v1/models`` (chat.petals.dev compatible).

``/api/v1/generate`` takes form fields, a query string or JSON, and answers
``{"ok": true, "outputs": TEXT}``; with ``stream: true`` (an extension) it
streams Server-Sent Events of the WebSocket API's delta shape. Errors are
raised and formatted by :mod:`.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from quart import Blueprint, jsonify, request

from ..errors import ApiError
from ..routes import sse
from ..routes.auth import require_api_key
from ..routes.common import client_address, service, state
from ..services.generation import GenerateSpec, Round
from ..validation import parse
from . import errors, schemas
from .forms import read_params

blueprint = Blueprint("http_api", __name__)
errors.register(blueprint)


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
    require_api_key(request)
    values = await read_params(request, schemas.HttpGenerateRequest)
    req = parse(schemas.HttpGenerateRequest, values)
    generation = service()
    spec = generation.resolve_model(req.model, own_origin=False)  # no public_api=false models over HTTP
    gen = GenerateSpec(inputs=req.inputs, max_new_tokens=req.max_new_tokens, max_length=req.max_length,
                       sampling=req.sampling(), round_tokens=1 if req.stream else None)
    rounds = generation.generate_once(spec, gen, client_address(request))
    if not req.stream:
        return jsonify(schemas.http_result("".join([r.outputs async for r in rounds])))
    try:
        first = await anext(rounds)  # errors before the first token still get a proper status
    except BaseException:
        await rounds.aclose()
        raise
    return sse.response(_events(first, rounds, debug=state().settings.debug))


async def _events(first: Round, rounds: AsyncIterator[Round], *, debug: bool) -> AsyncIterator[str]:
    """The stream's frames: every round, an error frame if the generation fails, then ``[DONE]``."""
    try:
        yield sse.event(schemas.delta(first.outputs, stop=first.stop, token_count=first.token_count))
        async for r in rounds:
            yield sse.event(schemas.delta(r.outputs, stop=r.stop, token_count=r.token_count))
    except ApiError as e:
        yield sse.event(errors.frame(e, debug=debug))
    finally:
        await rounds.aclose()
    yield sse.DONE
