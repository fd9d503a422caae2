"""Operational endpoints: ``/healthz``, ``/readyz``, ``/metrics``."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify

from .common import state

blueprint = Blueprint("ops", __name__)


def _models_loaded() -> tuple[bool, dict]:
    app_state = state()
    statuses = app_state.engine.status() if app_state.engine else {}
    loaded = bool(statuses) and all(s.ready for s in statuses.values())
    return loaded, statuses


@blueprint.get("/healthz")
async def healthz():
    """200 once the models are loaded (the process is live and useful), 503 while loading."""
    loaded, statuses = _models_loaded()
    body = {"status": "ok" if loaded else "loading",
            "models": {key: {"ready": s.ready, **({"error": s.error} if s.error else {})}
                       for key, s in statuses.items()}}
    if state().loading_error:
        body["error"] = state().loading_error
    return jsonify(body), 200 if loaded else 503


@blueprint.get("/readyz")
async def readyz():
    """200 when every model is loaded and its swarm serves all blocks; per-model details either way."""
    app_state = state()
    loaded, _ = _models_loaded()
    details = await app_state.engine.readiness() if app_state.engine and loaded else {}
    ready = loaded and all(d.get("swarm_ok") for d in details.values())
    return jsonify({"status": "ready" if ready else "not ready", "models": details,
                    "sessions_open": app_state.engine.open_sessions if app_state.engine else 0}), \
        200 if ready else 503


@blueprint.get("/metrics")
async def metrics():
    m = state().metrics
    return Response(m.render(), content_type=m.content_type)
