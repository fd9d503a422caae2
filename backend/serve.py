"""``python -m backend``: start the web app (and, by default, the embedded swarm).

With no initial peers configured and the embedded model prepared, a private
Petals swarm serving it is started on loopback first, and the app connects to
it exactly as it would to any swarm. With initial peers, the app connects
there. Ctrl-C / SIGTERM stop the app and every process started here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from .registry import load_registry
from .settings import Settings

logger = logging.getLogger("backend")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def embedded_model(settings: Settings):
    """The registry's embedded model if its files are prepared, else None."""
    registry = load_registry(settings.models, settings.models_dir).subset(embedded=True)
    spec = registry.lookup(registry.default) if registry.default else None
    if spec is None or not (Path(spec.repository) / "config.json").is_file():
        return None
    return spec


def start_embedded_swarm(settings: Settings, spec):
    from .engine.device import resolve_block_dtype, resolve_device
    from .swarm.cache_size import auto_cache_tokens, server_flags
    from .swarm.launcher import LocalSwarm, model_num_blocks

    device = resolve_device(settings.device)
    dtype = resolve_block_dtype(settings.embedded_dtype, device)
    cache_tokens = settings.embedded_cache_tokens or (
        auto_cache_tokens(spec.repository, dtype, model_num_blocks(spec.repository)) if device == "cpu" else 0)
    flags = server_flags(batching=settings.server_batching, max_batch=settings.server_max_batch,
                         cache_tokens=cache_tokens)
    swarm = LocalSwarm(spec.repository, dht_prefix=spec.dht_prefix or spec.key,
                       servers=settings.embedded_blocks_servers, torch_dtype=dtype,
                       device=device, first_port=settings.embedded_port,
                       log_file=settings.models_dir / "embedded-swarm.log", extra_args=flags)
    print(f"Starting the embedded Petals swarm ({spec.key}, {device}, {swarm.torch_dtype}, batching "
          f"{'on' if settings.server_batching else 'off'}, attention cache "
          f"{cache_tokens or 'Petals default'} tokens per block); "
          f"log: {swarm.log_file.name}", flush=True)
    peers = swarm.start()
    return swarm, peers


def serve(settings: Settings) -> int:
    import hypercorn.asyncio
    from hypercorn.config import Config

    from .app import create_app, served_registry
    from .settings import SettingsError

    swarm = None
    embedded = False
    spec = embedded_model(settings) if settings.uses_embedded_swarm else None
    try:  # the models to serve, checked before any process starts
        served_registry(settings, embedded_swarm=spec is not None)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.uses_embedded_swarm:
        if spec is not None:
            swarm, peers = start_embedded_swarm(settings, spec)
            settings = dataclasses.replace(settings, initial_peers=peers)
            embedded = True
            print("Embedded swarm is up. Other machines can join it or use it with initial peers:", flush=True)
            for peer in peers:
                print(f"  {peer}", flush=True)
        else:
            print("The embedded model is not prepared (python -m backend model prepare): "
                  "connecting to the public swarm.", flush=True)
    if not (settings.frontend_dir / "index.html").is_file():
        print(f"Note: the web app is not built ({settings.frontend_dir} has no index.html): the APIs work, the page "
              "asks you to run `make install`.", flush=True)
    try:
        app = create_app(settings, embedded_swarm=embedded)
        config = Config()
        config.bind = [f"{settings.host}:{settings.port}"]
        config.accesslog = None
        config.graceful_timeout = settings.graceful_timeout
        config.websocket_max_message_size = settings.max_ws_message_bytes
        print(f"Petals Chat is running at http://{settings.host}:{settings.port} (Ctrl-C to stop)", flush=True)
        asyncio.run(hypercorn.asyncio.serve(app, config))
    except KeyboardInterrupt:
        pass
    finally:
        if swarm is not None:
            print("Stopping the embedded swarm...", flush=True)
            swarm.stop(grace=5)
        reap_children()
    return 0


def reap_children(timeout: float = 5.0) -> None:
    """End every process this one started and that is still running (DHT workers, p2pd, helpers)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
