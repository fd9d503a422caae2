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
    resumable: Any = None  # a legacy.resumable.ResumableSessions once serving
    prompt_cache: Any = None  # a services.prompt_cache.PromptCache once serving (the OpenAI API's kept sessions)


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
    """True when the request comes from the app's own page: ``Origin`` equals ``scheme://Host`` and ``Host`` is one
    of the trusted host names (:func:`trusted_hosts`).

    ``Origin`` and ``Host`` both come from the client: a page on any site can make a browser send a matching pair
    by DNS rebinding (its own name pointed at this server), so the pair alone proves nothing. The host name must
    be one the server was told about (``allowed_hosts``) or one a rebinding page cannot have (loopback names, the
    address the server listens on).
    """
    origin = conn.headers.get("Origin")
    if not origin:
        return False
    scheme = {"ws": "http", "wss": "https"}.get(conn.scheme, conn.scheme)
    host = conn.host or ""
    return origin.rstrip("/") == f"{scheme}://{host}" and host_name(host) in trusted_hosts(state().settings)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(host: str) -> str:
    """The name in a ``Host`` header, without the port and brackets, lower case (``[::1]:5000`` -> ``::1``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def trusted_hosts(settings: Settings) -> frozenset[str]:
    """Host names whose page is the app's own: the ``allowed_hosts`` setting, else loopback names and the
    address the server listens on (when it is a specific one)."""
    if settings.allowed_hosts:
        return frozenset(host_name(h) for h in settings.allowed_hosts)
    listen = host_name(settings.host) if ":" not in settings.host else settings.host.strip("[]").lower()
    wildcard = listen in ("0.0.0.0", "::", "")
    return LOOPBACK_NAMES | (frozenset() if wildcard else {listen})
