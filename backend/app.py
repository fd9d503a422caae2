"""The app factory: ``create_app(settings, engine=None)``.

Nothing is loaded at import time. The engine (Petals client) is created when
the app starts serving and its models are loaded by a background
:class:`~backend.services.model_loader.ModelLoader`, so the server answers
(``/healthz`` 503, the page) while models load; a model that fails to load is
retried with backoff while the others serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
import uuid

from quart import Blueprint, Quart, g, request
from quart_cors import cors

from . import slow_readers, ws_compression
from .legacy import http_routes, websocket_routes
from .legacy.resumable import ResumableSessions
from .openai import routes as openai_routes
from .openapi import blueprint as openapi_blueprint
from .registry import RegistryError, load_registry
from .routes import http_errors, ops, static, swarm_api
from .routes.common import EXTENSION, AppState
from .services.generation import GenerationService
from .services.limits import SessionLimiter
from .services.metrics import Metrics
from .services.model_loader import ModelLoader
from .services.prompt_cache import PromptCache
from .services.shutdown import ShutdownWatch
from .settings import Settings, SettingsError, env_name

logger = logging.getLogger("backend")

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                           "img-src 'self' data:; connect-src 'self' ws: wss:; object-src 'none'; "
                           "base-uri 'self'; frame-ancestors 'none'; form-action 'self'")


def create_app(settings: Settings, *, engine=None, embedded_swarm: bool = False) -> Quart:
    registry = served_registry(settings, embedded_swarm=embedded_swarm)

    app = Quart("backend", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PETALS_CHAT_DEBUG"] = settings.debug
    app_state = AppState(settings=settings, metrics=Metrics(), registry=registry)
    app.extensions[EXTENSION] = app_state
    _register_blueprints(app, settings)

    @app.before_serving
    async def start_engine() -> None:
        ws_compression.configure(settings.ws_compression)  # Hypercorn always offers it otherwise
        nonlocal engine
        if engine is None:
            engine = _build_engine(settings, registry)
        _start_services(app_state, engine)

    @app.after_serving
    async def stop_engine() -> None:
        await _stop_services(app_state)

    _install_request_hooks(app, app_state)
    app.asgi_app = slow_readers.middleware(app.asgi_app)  # streams find their connection's transport
    return app


def _register_blueprints(app: Quart, settings: Settings) -> None:
    # The HTTP APIs get CORS through a parent blueprint made per app (so create_app can run twice).
    http_apis = Blueprint("http", __name__)
    for blueprint in (http_routes.blueprint, swarm_api.blueprint, ops.blueprint, openai_routes.blueprint,
                      openapi_blueprint):
        http_apis.register_blueprint(blueprint)
    app.register_blueprint(cors(http_apis, allow_origin=_cors_origins(settings)))
    app.register_blueprint(websocket_routes.blueprint)
    app.register_blueprint(static.blueprint)
    http_errors.register(app)


def _build_engine(settings: Settings, registry):
    """The Petals engine for the registry's models (imported only when the app serves without a given engine)."""
    from .engine.petals_engine import PetalsEngine

    return PetalsEngine(list(registry.models), initial_peers=settings.initial_peers,
                        device=settings.device, dtype=settings.dtype,
                        request_timeout=settings.request_timeout, max_retries=settings.max_retries,
                        max_concurrent_generations=settings.max_concurrent_generations,
                        client_config=_client_config(settings))


def _start_services(app_state: AppState, engine) -> None:
    """Wire the engine, the generation service, the shutdown watch and resumable sessions; start loading models."""
    settings, registry = app_state.settings, app_state.registry
    app_state.engine = engine
    loader = ModelLoader(engine, [spec.key for spec in registry.models],
                         min_backoff=settings.model_retry_backoff, max_backoff=settings.model_retry_max_backoff,
                         progress=lambda msg: logger.info(msg))
    app_state.service = GenerationService(
        engine, registry, _limiter(settings), app_state.metrics, max_new_tokens_limit=settings.max_new_tokens_limit,
        max_input_chars=settings.max_input_chars, max_input_tokens=settings.max_input_tokens,
        default_max_tokens=settings.default_max_tokens,
        log_prompts=settings.log_prompts, check_ready=loader.check)
    app_state.shutdown = ShutdownWatch(settings.graceful_timeout)
    app_state.shutdown.install()
    app_state.resumable = ResumableSessions(settings.reattach_window)
    app_state.prompt_cache = PromptCache(engine, max_sessions=settings.prompt_cache_sessions,
                                         max_tokens=settings.prompt_cache_tokens,
                                         idle_timeout=settings.prompt_cache_idle_timeout,
                                         limiter=app_state.service.limiter, metrics=app_state.metrics)
    app_state.loader = loader
    loader.start()


async def _stop_services(app_state: AppState) -> None:
    if app_state.shutdown is not None:
        app_state.shutdown.close()
    if app_state.resumable is not None:  # detached sessions: their generations end now
        await app_state.resumable.close_all()
    if app_state.prompt_cache is not None:
        await app_state.prompt_cache.close()
    if app_state.loader is not None:  # no retry may start once the engine is shut down
        await asyncio.to_thread(app_state.loader.stop)
    if app_state.engine is not None:
        app_state.engine.shutdown()


def _install_request_hooks(app: Quart, app_state: AppState) -> None:
    """Request id and timing in; security headers, the request counter and the access log line out."""

    @app.before_request
    async def remember_start() -> None:
        g.started = time.perf_counter()
        g.request_id = safe_request_id(request.headers.get("X-Request-ID", ""))

    @app.after_request
    async def finish(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "strict-origin-when-cross-origin")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers["X-Request-ID"] = g.request_id
        route = request.url_rule.rule if request.url_rule else "unmatched"
        app_state.metrics.requests.labels(route, str(response.status_code)).inc()
        logger.info("%s %s %d %.1fms request_id=%s", request.method, request.path, response.status_code,
                    (time.perf_counter() - g.started) * 1000, g.request_id)
        return response


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def safe_request_id(given: str) -> str:
    """The client's ``X-Request-ID`` when it is 1-64 safe characters (letters, digits, ``._:-``), else a new one:
    the value is echoed and logged, so escape bytes or fake log text never get through."""
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


def served_registry(settings: Settings, *, embedded_swarm: bool = False):
    """The registry models this app serves (``serve_models``; only embedded ones on the embedded swarm), with the
    default model; :class:`SettingsError` names a setting that selects nothing or an unknown model."""
    registry = load_registry(settings.models, settings.models_dir)
    try:
        registry = registry.only(settings.serve_models)
    except RegistryError as e:
        raise SettingsError(f"invalid setting serve_models ({env_name('serve_models')}): {e}") from None
    if embedded_swarm:
        registry = registry.subset(embedded=True)
        if not registry.models:
            raise SettingsError(f"invalid setting serve_models ({env_name('serve_models')}): none of "
                                f"{', '.join(settings.serve_models)} is served by the embedded swarm "
                                "(set initial_peers to use another swarm)")
    if settings.default_model:
        spec = registry.lookup(settings.default_model)
        if spec is None:
            raise SettingsError(f"invalid setting default_model: {settings.default_model!r} is not in the registry")
        registry = dataclasses.replace(registry, default=spec.key)
    return registry


def _limiter(settings: Settings) -> SessionLimiter:
    return SessionLimiter(settings.max_sessions, settings.max_sessions_per_client,
                          max_tokens_per_client=settings.max_tokens_per_client,
                          max_idle_per_client=settings.max_idle_sessions_per_client,
                          max_generations=settings.max_concurrent_generations, queue_timeout=settings.queue_timeout)


def _client_config(settings: Settings) -> dict:
    """Petals client options (its ClientConfig fields) taken from the settings."""
    return {"min_backoff": settings.min_backoff, "max_backoff": settings.max_backoff,
            "ban_timeout": settings.ban_timeout, "update_period": settings.update_period}


def _cors_origins(settings: Settings):
    origins = settings.cors_origins
    return "*" if origins == ["*"] else origins
