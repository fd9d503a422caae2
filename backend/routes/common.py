"""Helpers shared by the route modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import current_app

from ..errors import NotReady

if TYPE_CHECKING:
    from ..engine.types import Engine
    from ..registry import Registry
    from ..services.generation import GenerationService
    from ..services.metrics import Metrics
    from ..settings import Settings

EXTENSION = "petals_chat"


@dataclass
class AppState:
    """What the routes need, kept on the app (never in module globals)."""

    settings: Settings
    metrics: Metrics
    registry: Registry
    service: GenerationService | None = None
    engine: Engine | None = None
    loading_error: str | None = None
    loader: Any = None  # a services.model_loader.ModelLoader once serving
    shutdown: Any = None  # a services.shutdown.ShutdownWatch once serving


def state() -> AppState:
    return current_app.extensions[EXTENSION]


def service() -> GenerationService:
    """The generation service every API route goes through (NotReady while the app is still starting)."""
    generation = state().service
    if generation is None:
        raise NotReady("Models are still loading, retry in a moment")
    return generation


def client_address(conn) -> str:
    """The client's address (Hypercorn puts the peer in ``remote_addr``)."""
    return conn.remote_addr or "unknown"


def is_own_origin(conn) -> bool:
    """True when the request comes from the app's own page (``Origin`` equals our origin)."""
    origin = conn.headers.get("Origin")
    if not origin:
        return False
    scheme = {"ws": "http", "wss": "https"}.get(conn.scheme, conn.scheme)
    return origin.rstrip("/") == f"{scheme}://{conn.host}"
