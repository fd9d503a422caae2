"""``GET /api/v1/swarm?model=KEY``: the servers of a model's swarm (the page's swarm panel).

Each server: its peer id, the blocks it holds, throughput, state, cache left and version, as the
swarm's DHT announces them (:mod:`backend.engine.swarm_map`), read at most every few seconds
(:mod:`backend.services.swarm_view`). Errors in the legacy format.
"""

from __future__ import annotations

from quart import Blueprint, jsonify, request

from ..legacy import errors, schemas
from .common import service

blueprint = Blueprint("swarm_api", __name__)
errors.register(blueprint)


@blueprint.get("/api/v1/swarm")
async def swarm_servers():
    # who serves which blocks is public in the DHT: no public_api rule for this list
    spec = service().resolve_model(request.args.get("model"), own_origin=True)
    # the view generations read the announced cache from: one DHT read every few seconds serves both
    return jsonify(schemas.ok(**await service().capacity.view.servers(spec.key)))
