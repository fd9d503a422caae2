"""ASGI entry point for running under an external server: ``app = create_app(load_settings())``.

    hypercorn -c deploy/hypercorn.toml backend.asgi:app

Settings come from ``PETALS_CHAT_*`` environment variables. Each Hypercorn worker
imports this module and runs its own Petals client (its own DHT node and
models), so connect them to a running swarm with ``PETALS_CHAT_INITIAL_PEERS``
(start a private one with ``python -m backend swarm MODEL_PATH``): the embedded
swarm is started only by ``python -m backend``. Without initial peers the
workers use the public swarm.
"""

from __future__ import annotations

from .app import create_app
from .serve import configure_logging
from .services.shutdown import hold_hypercorn_workers
from .settings import load_settings

settings = load_settings()
configure_logging(settings.log_level)
app = create_app(settings)
hold_hypercorn_workers()  # before Hypercorn builds its shutdown poll for this worker
