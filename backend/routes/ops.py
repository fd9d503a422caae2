"""Operational endpoints: ``/healthz``, ``/readyz``, ``/metrics``.

Health is per model (``backend.services.model_loader``): one model that cannot
load does not make the app unhealthy while another one serves.

* ``/healthz``: 200 once at least one model is ready; 503 while none is
  (``loading``, or ``failed`` when every model failed and waits for a retry).
* ``/readyz``: 200 when at least one ready model's swarm serves all its blocks
  and the app is not shutting down; each model's state either way.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, jsonify

from ..services.model_loader import FAILED, READY
from .common import state

blueprint = Blueprint("ops", __name__)


def _model_states() -> dict[str, dict[str, Any]]:
    """Each served model's load state (state, ready, attempts, error, retry_at, retry_in_s)."""
    app_state = state()
    loader = app_state.loader
    if loader is None:  # not serving yet
        return {spec.key: {"state": "loading", "ready": False, "attempts": 0} for spec in app_state.registry.models}
    return {key: s.to_json() for key, s in loader.states().items()}


def _overall(models: dict[str, dict[str, Any]]) -> str:
    states = {m["state"] for m in models.values()}
    if READY in states:
        return "ok"
    return "failed" if states == {FAILED} else "loading"


@blueprint.get("/healthz")
async def healthz():
    """200 once at least one model is ready (the process is live and useful); 503 while none is."""
    models = _model_states()
    status = _overall(models)
    return jsonify({"status": status, "models": models}), 200 if status == "ok" else 503


@blueprint.get("/readyz")
async def readyz():
    """200 when a ready model's swarm serves all its blocks (and no shutdown runs); per-model states either way."""
    app_state = state()
    models = _model_states()
    engine = app_state.engine
    if engine is not None and any(m["ready"] for m in models.values()):
        details = await engine.readiness()  # swarm details (servers, blocks) of the loaded models
        for key, model in models.items():
            # a not-ready model's load error is the loader's to tell; a ready one's may be a failed DHT read
            swarm = {k: v for k, v in details.get(key, {}).items() if k != "ready" and (k != "error" or model["ready"])}
            models[key] = {**swarm, **model}
    shutting_down = app_state.shutdown is not None and app_state.shutdown.started.is_set()
    ready = not shutting_down and any(m["ready"] and m.get("swarm_ok") for m in models.values())
    body = {"status": "ready" if ready else "not ready", "models": models,
            "sessions_open": engine.open_sessions if engine is not None else 0}
    if shutting_down:
        body["shutting_down"] = True
    return jsonify(body), 200 if ready else 503


@blueprint.get("/metrics")
async def metrics():
    m = state().metrics
    return Response(m.render(), content_type=m.content_type)
