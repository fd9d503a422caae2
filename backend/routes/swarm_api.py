"""``GET /api/v1/swarm?model=KEY``: the servers of a model's swarm (the page's swarm panel).

Each server: its peer id, the blocks it holds, throughput, state, cache left and version, as the
swarm's DHT announces them (:mod:`backend.engine.swarm_map`), read at most every few seconds
(:mod:`backend.services.swarm_view`). Errors in the legacy format.
"""

from __future__ import annotations

from quart import Blueprint, current_app, jsonify, request

from ..legacy import errors, schemas
from ..services.swarm_view import SwarmView
from .common import service, state

blueprint = Blueprint("swarm_api", __name__)
errors.register(blueprint)

_EXTENSION = "petals_chat_swarm"


def _view() -> SwarmView:
    view = current_app.extensions.get(_EXTENSION)
    if view is None:
        view = current_app.extensions[_EXTENSION] = SwarmView(state().engine)
    return view


@blueprint.get("/api/v1/swarm")
async def swarm_servers():
    # who serves which blocks is public in the DHT: no public_api rule for this list
    spec = service().resolve_model(request.args.get("model"), own_origin=True)
    return jsonify(schemas.ok(**await _view().servers(spec.key)))
