"""``GET /openapi.json``: an OpenAPI 3.1 document generated from the pydantic models the routes use.

Request bodies come from the models the routes validate with (OpenAI's in
:mod:`backend.openai.schemas`, the legacy :class:`backend.legacy.schemas.HttpGenerateRequest`);
OpenAI responses from the models the API builds them with. The legacy APIs and the
operational endpoints build their JSON with small functions, so their shapes are
described here by documentation models (checked against real answers by
``tests/test_openapi_fuzz.py``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema
from quart import Blueprint, jsonify

from . import __version__
from .legacy.schemas import HttpGenerateRequest
from .openai import schemas as oa

blueprint = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
DESCRIPTION = ("Chat with large language models over a Petals swarm: an OpenAI-compatible API (`/v1`), "
               "the original chat.petals.dev HTTP API (`/api/v1`) and operational endpoints. The WebSocket "
               "API `/api/v2/generate` is not described here.")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class LegacyResult(_Doc):
    """``POST /api/v1/generate`` without ``stream``."""

    ok: Literal[True]
    outputs: str


class LegacyDelta(_Doc):
    """One Server-Sent Event of ``POST /api/v1/generate`` with ``stream: true``."""

    ok: Literal[True]
    outputs: str
    stop: bool
    token_count: int


class LegacyError(_Doc):
    """An error of the legacy APIs: one line of text and a stable code (the README lists the codes)."""

    ok: Literal[False]
    traceback: str
    code: str


class LegacyModels(_Doc):
    """The model registry (``GET /api/v1/models``)."""

    default: str
    models: list[dict[str, Any]]


class SwarmServer(_Doc):
    """One server of a model's swarm, as its DHT announces it."""

    peer_id: str
    short_id: str
    start: int
    end: int
    spans: list[list[int]]
    state: Literal["online", "joining", "offline"]
    throughput: float | None
    cache_tokens_left: int | None
    version: str | None


class Swarm(_Doc):
    """``GET /api/v1/swarm``: the servers holding a model's blocks (read from the DHT at most every 5 s)."""

    ok: Literal[True]
    model: str
    blocks_total: int
    blocks_served: int
    swarm_ok: bool
    servers: list[SwarmServer]
    age_s: float


class Health(_Doc):
    """``/healthz``: ok once at least one model is ready; each model's state (ready, loading or failed)."""

    status: Literal["ok", "loading", "failed"]
    models: dict[str, dict[str, Any]]


class Readiness(_Doc):
    """``/readyz``: each model's state and, once loaded, its swarm's servers and blocks."""

    status: Literal["ready", "not ready"]
    models: dict[str, dict[str, Any]]
    sessions_open: int
    shutting_down: bool | None = None


REQUESTS = (oa.ChatCompletionRequest, oa.CompletionRequest, HttpGenerateRequest)
RESPONSES = (oa.ChatCompletion, oa.ChatCompletionChunk, oa.Completion, oa.CompletionChunk, oa.ModelList,
             oa.ModelCard,
             oa.ErrorResponse, LegacyResult, LegacyDelta, LegacyError, LegacyModels, Swarm, Health, Readiness)


def _json(ref: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _generation(summary: str, request: dict, result: dict, chunk: dict, error: dict, *,
                form: bool = False) -> dict:
    content = {"application/json": {"schema": request}}
    if form:
        content["application/x-www-form-urlencoded"] = {"schema": request}
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {"description": "The result; with `stream: true`, Server-Sent Events `data: CHUNK` "
                                   "ending with `data: [DONE]` (an error during the stream is an event "
                                   "with the error object, then `[DONE]`)",
                    "content": {"application/json": {"schema": result},
                                "text/event-stream": {"schema": {"type": "string"},
                                                      "itemSchema": {"anyOf": [chunk, error]}}}},
            "default": _json(error, "An error: 400 bad parameter, 401 bad or missing API key, 403 model not "
                                    "public, 404 unknown model, 413 too large, 429 busy, 503 not ready"),
        }}}


@functools.cache
def build_openapi() -> dict[str, Any]:
    keyed = [(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES]
    refs, definitions = models_json_schema(keyed, ref_template=REF)
    ref = {model: refs[(model, mode)] for model, mode in keyed}
    paths = {
        "/v1/chat/completions": _generation("Chat completion (OpenAI-compatible)", ref[oa.ChatCompletionRequest],
                                            ref[oa.ChatCompletion], ref[oa.ChatCompletionChunk],
                                            ref[oa.ErrorResponse]),
        "/v1/completions": _generation("Text completion (OpenAI-compatible)", ref[oa.CompletionRequest],
                                       ref[oa.Completion], ref[oa.CompletionChunk], ref[oa.ErrorResponse]),
        "/v1/models": {"get": {"summary": "Models (OpenAI-compatible)", "responses": {
            "200": _json(ref[oa.ModelList], "Models this client may use"),
            "default": _json(ref[oa.ErrorResponse], "An error")}}},
        "/v1/models/{model}": {"get": {
            "summary": "One model by key or alias (OpenAI-compatible)",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json(ref[oa.ModelCard], "The model"),
                          "default": _json(ref[oa.ErrorResponse], "404: unknown, or not public to this client")}}},
        "/api/v1/generate": _generation("Generate (the original chat.petals.dev HTTP API)", ref[HttpGenerateRequest],
                                        ref[LegacyResult], ref[LegacyDelta], ref[LegacyError], form=True),
        "/api/v1/models": {"get": {"summary": "The model registry", "responses": {
            "200": _json(ref[LegacyModels], "Models and their chat settings")}}},
        "/api/v1/swarm": {"get": {
            "summary": "The servers of a model's swarm: blocks, throughput, state, cache left, version",
            "parameters": [{"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "A model key or alias (default: the registry's default)"}],
            "responses": {"200": _json(ref[Swarm], "The servers, sorted by first block"),
                          "default": _json(ref[LegacyError], "404 unknown model, 503 not ready or swarm error")}}},
        "/healthz": {"get": {"summary": "Liveness: 200 once at least one model is loaded", "responses": {
            "200": _json(ref[Health], "A model is ready"), "503": _json(ref[Health], "No model ready yet")}}},
        "/readyz": {"get": {"summary": "Readiness: per-model state, servers and blocks of the swarm", "responses": {
            "200": _json(ref[Readiness], "Ready"), "503": _json(ref[Readiness], "Not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
        }}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Petals Chat", "version": __version__, "description": DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer",
                                           "description": "Needed when the server sets api_keys"}},
        },
        "security": [{}, {"apiKey": []}],
    }


@blueprint.get("/openapi.json")
async def openapi_json():
    return jsonify(build_openapi())
