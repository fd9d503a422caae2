"""The built web app (``frontend/dist``) at ``/``: index never cached, hashed assets cached for a year."""

from __future__ import annotations

from pathlib import Path

from quart import Blueprint, Response, send_from_directory

from .common import state

blueprint = Blueprint("static_app", __name__)

MISSING = """<!doctype html><meta charset="utf-8"><title>Petals Chat</title>
<h1>The web app is not built</h1>
<p>Run <code>make install</code> (or <code>cd frontend &amp;&amp; npm ci &amp;&amp; npm run build</code>),
then reload. The APIs under <code>/api</code> and <code>/v1</code> work without it.</p>"""


def _dist() -> Path:
    return state().settings.frontend_dir


@blueprint.get("/")
async def index():
    path = _dist() / "index.html"
    if not path.is_file():
        return Response(MISSING, status=503, content_type="text/html; charset=utf-8")
    response = await send_from_directory(_dist(), "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/assets/<path:name>")
async def assets(name: str):
    response = await send_from_directory(_dist() / "assets", name)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


@blueprint.get("/<name>")
async def top_level_file(name: str):
    """Files Vite copies from ``public/`` (favicon and the like)."""
    response = await send_from_directory(_dist(), name)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
