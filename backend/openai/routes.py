"""Routes of the OpenAI-compatible API: parse the request, call :mod:`.serving`, format the answer.

``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``POST /v1/completions``.
Every error is OpenAI's ``{"error": {"message", "type", "param", "code"}}``: routes raise
:class:`~backend.errors.ApiError` and the blueprint's handler formats it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel
from quart import Blueprint, Response, current_app, g, jsonify, request

from ..errors import ApiError, TooLarge
from ..routes import json_body, sse
from ..routes.auth import require_api_key
from ..routes.common import client_address, is_own_origin, service, state
from . import schemas
from .serving import OpenAIServing

blueprint = Blueprint("openai", __name__, url_prefix="/v1")
CREATED = "PETALS_CHAT_OPENAI_CREATED"  # app config: the models' ``created``, the same on every call


def _created() -> int:
    """The models' ``created``: when this app first listed them (stable for the app's life)."""
    return current_app.config.setdefault(CREATED, int(time.time()))


def error_response(e: ApiError) -> Response:
    response = jsonify(schemas.ErrorResponse.of(e).model_dump(mode="json"))
    response.status_code = e.status
    if e.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


@blueprint.errorhandler(ApiError)
async def api_error(e: ApiError) -> Response:
    return error_response(e)


def _serving() -> OpenAIServing:
    return OpenAIServing(service(), state().prompt_cache)


async def _json_body() -> Any:
    limit = current_app.config["MAX_CONTENT_LENGTH"]  # the max_body_bytes setting
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body is too large ({request.content_length} bytes, limit {limit})")
    body = await request.get_data(as_text=False)  # a chunked body over the limit: Quart's 413 (http_errors)
    return json_body.decode(body, subject="body")


@blueprint.before_request
async def check_api_key():
    if request.method != "OPTIONS":  # CORS preflights carry no credentials
        require_api_key(request)


@blueprint.get("/models")
async def list_models():
    models = _serving().list_models(own_origin=is_own_origin(request), created=_created())
    return jsonify(models.model_dump(mode="json"))


@blueprint.get("/models/<path:model>")
async def get_model(model: str):
    card = _serving().model_card(model, own_origin=is_own_origin(request), created=_created())
    return jsonify(card.model_dump(mode="json"))


async def _generate(model: type[schemas.ChatCompletionRequest | schemas.CompletionRequest]):
    req = schemas.parse_request(model, await _json_body())
    serving = _serving()
    plan = serving.plan_chat if isinstance(req, schemas.ChatCompletionRequest) else serving.plan_completion
    # templating and tokenizing a long prompt take a while: on a worker thread, the event loop serves others
    job = await asyncio.to_thread(plan, req, own_origin=is_own_origin(request), request_id=g.request_id)
    if req.stream:
        return sse.response(await serving.open_stream(job, client_address(request)))
    result: BaseModel = await serving.complete(job, client_address(request))
    return jsonify(result.model_dump(mode="json"))


@blueprint.post("/chat/completions")
async def chat_completions():
    return await _generate(schemas.ChatCompletionRequest)


@blueprint.post("/completions")
async def completions():
    return await _generate(schemas.CompletionRequest)
