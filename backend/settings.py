"""One settings object for the whole backend.

Every field is read from an environment variable ``PETALS_CHAT_<NAME>`` and
from a CLI flag ``--<name>`` of ``python -m backend`` (flags win). Each field
carries its help text; the README table is checked against these fields by a
test, so a new setting cannot stay undocumented.

Validation happens in :func:`load_settings`, before any model is loaded: an
invalid value raises :class:`SettingsError` with one line naming the setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "PETALS_CHAT_"
REPO_ROOT = Path(__file__).resolve().parent.parent

DTYPE_POLICIES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    """An invalid setting; the message is one line naming the setting."""


def _setting(default: Any, help: str, **extra: Any) -> Any:
    meta = {"help": help, **extra}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "Address to listen on.")
    port: int = _setting(5000, "TCP port to listen on.", minimum=0, maximum=65535)
    initial_peers: list[str] = _setting(
        [],
        "Multiaddrs of the swarm's initial peers, space- or comma-separated. Empty: start the "
        "embedded local swarm if the embedded model is prepared, else use the public swarm.",
    )
    models: Path = _setting(REPO_ROOT / "backend" / "models.toml", "Path of the model registry (TOML).")
    models_dir: Path = _setting(REPO_ROOT / "models", "Folder for prepared local models (the embedded model).")
    default_model: str = _setting("", "Key of the default model (empty: the registry's default).")
    serve_models: list[str] = _setting(
        [], "Keys (or aliases) of the registry models to serve, comma- or space-separated (empty: all of them; with "
        "the embedded swarm, its embedded models). The others are neither loaded nor listed.")
    model_retry_backoff: float = _setting(
        10.0, "Seconds before a model that failed to load is tried again; the wait doubles after each failure, up "
        "to model_retry_max_backoff. The other models serve meanwhile.", minimum=0.01)
    model_retry_max_backoff: float = _setting(300.0, "Longest wait between two load attempts of a failed model, "
                                              "in seconds.", minimum=0.01)
    device: str = _setting("auto", "Device for embeddings and LM head: auto (cuda if available), cpu or cuda.",
                           choices=DEVICES)
    dtype: str = _setting("auto", "Client dtype policy: auto (GPU: model's dtype; CPU: bfloat16 with AVX-512, "
                          "else float32), float32, bfloat16 or float16.", choices=DTYPE_POLICIES)
    step_timeout: float = _setting(300.0, "Seconds a WebSocket may stay idle between requests before it is closed.",
                                   minimum=0.1)
    request_timeout: float = _setting(180.0, "Seconds one swarm request may take before Petals retries it.",
                                      minimum=0.1)
    max_retries: int = _setting(8, "Swarm retries for a failed step before the client gets an error "
                                "(0: retry forever, as Petals does by default).", minimum=0)
    min_backoff: float = _setting(1.0, "Seconds Petals waits before its second retry of a failed swarm step; the wait "
                                  "doubles with each retry, up to max_backoff.", minimum=0.0)
    max_backoff: float = _setting(15.0, "Longest wait between two retries of a failed swarm step, in seconds.",
                                  minimum=0.0)
    ban_timeout: float = _setting(15.0, "Seconds Petals avoids a server that failed a request (doubles while it keeps "
                                  "failing).", minimum=0.0)
    update_period: float = _setting(60.0, "Seconds between two refreshes of the swarm's server list from the DHT "
                                    "(new and departed servers are noticed at this pace).", minimum=0.5)
    cors_origins: list[str] = _setting(["*"], "Origins allowed by CORS for the HTTP APIs, space- or comma-separated "
                                       "('*' for any, as the original public API).")
    api_keys: list[str] = _setting([], "API keys, space- or comma-separated. When set, /v1/* and /api/v1/generate "
                                   "require 'Authorization: Bearer KEY' (the app's own page is exempt).")
    allowed_hosts: list[str] = _setting(
        [], "Host names the app's page is served under (e.g. chat.example.org), space- or comma-separated. Only a "
        "request whose Origin is scheme://Host with one of these hosts counts as the page's own (no API key, "
        "public_api=false models), so DNS rebinding cannot borrow it. Empty: loopback names and the listening "
        "address.")
    log_prompts: bool = _setting(False, "Log prompt and answer text (off: request logs carry no user text).")
    max_sessions: int = _setting(128, "Maximum open inference sessions (socket and HTTP together).", minimum=1)
    max_sessions_per_client: int = _setting(16, "Maximum open inference sessions per client address.", minimum=1)
    max_tokens_per_client: int = _setting(
        12288, "Most tokens of max_length one client address may hold in open sessions together (the swarm "
        "reserves attention cache for them): one address cannot take the whole cache.", minimum=1)
    max_idle_sessions_per_client: int = _setting(
        8, "Most sessions one client address may hold open without generating (before their first generation "
        "or between two); more are refused with 429.", minimum=1)
    unused_session_timeout: float = _setting(
        60.0, "Seconds a WebSocket's inference session may stay open without its first generation; then the "
        "connection is closed (idle_timeout) and its slot and cache freed.", minimum=0.1)
    reattach_window: float = _setting(
        120.0, "Seconds a resumable WebSocket session (opened with resumable: true) is kept after its socket goes "
        "away, its generation still running, so that a new socket can reattach with its resume_token (0: close "
        "at once).", minimum=0.0)
    prompt_cache_sessions: int = _setting(
        16, "Prompt prefix reuse: most inference sessions the OpenAI API keeps open after their requests, so that a "
        "request whose prompt extends one (the next turn of a conversation) continues it instead of prefilling the "
        "whole prompt again (0: no reuse).", minimum=0)
    prompt_cache_tokens: int = _setting(
        32768, "Prompt prefix reuse: most tokens of attention cache (max_length) the kept sessions may reserve in "
        "the swarm together; the least recently used are closed first (0: no reuse).", minimum=0)
    prompt_cache_idle_timeout: float = _setting(
        120.0, "Prompt prefix reuse: seconds a kept session may stay unused before it is closed and its cache "
        "freed (0: no reuse); keep it under the servers' step timeout (Petals: 5 minutes), after which they drop "
        "an idle session.", minimum=0.0)
    default_max_tokens: int = _setting(
        1024, "New tokens an OpenAI request without max_tokens may generate (and reserves cache for), unless the "
        "model's registry entry sets max_new_tokens.", minimum=1)
    max_concurrent_generations: int = _setting(
        64, "Generations running at once (threads that drive the Petals client).", minimum=1)
    queue_timeout: float = _setting(
        30.0, "Seconds a request may wait in line when every session slot (max_sessions) or generation slot "
        "(max_concurrent_generations) is taken, or when the swarm has no attention cache left for a session's first "
        "generation (its servers announce too little, or refuse it) until sessions here close, kept prompt-cache "
        "sessions first; clients are served round robin by address, and a WebSocket client that opens with "
        "queue_updates: true is told its place. Then it fails with 'Server is busy' or 'attention cache is full' "
        "(0: at once; at once too when nothing this app holds could free the cache a session needs).", minimum=0.0)
    max_new_tokens_limit: int = _setting(4096, "Largest max_new_tokens a request may ask for.", minimum=1)
    max_input_chars: int = _setting(1_000_000, "Largest 'inputs' text a request may send, in characters.", minimum=1)
    max_input_tokens: int = _setting(16384, "Largest 'inputs' a request may send, in tokens.", minimum=1)
    max_list_items: int = _setting(
        2048, "Longest JSON list a request may send (chat messages, stop sequences ...), and a sixteenth of the "
        "JSON values it may hold in all; checked before any validation (more: 413).", minimum=16)
    max_session_seconds: float = _setting(
        3600.0, "Longest a WebSocket connection may stay open, in seconds (generating or not); then it is told "
        "why and closed.", minimum=1.0)
    max_ws_message_bytes: int = _setting(
        4 * 1024 * 1024, "Largest WebSocket message a client may send, in bytes (larger: closed with code 1009).",
        minimum=1024)
    max_body_bytes: int = _setting(4 * 1024 * 1024, "Largest HTTP request body, in bytes (larger: 413).", minimum=1024)
    ws_compression: bool = _setting(False, "Accept WebSocket compression (permessage-deflate). Off: token frames "
                                    "are tiny, and compression costs CPU per frame and memory per connection.")
    send_timeout: float = _setting(
        30.0, "Seconds one WebSocket reply or streamed (Server-Sent Events) chunk may wait for a client that does "
        "not read before the connection is dropped (a WebSocket with close code 1008).", minimum=0.1)
    max_unread_bytes: int = _setting(
        262144, "Bytes of replies this server buffers for one streaming client (WebSocket or Server-Sent Events) "
        "that does not read them: its socket's send buffer and write buffer together; once they are full, a send "
        "waits at most send_timeout seconds, then the client is dropped (0: the kernel's own limits, megabytes).",
        minimum=0)
    max_queued_requests: int = _setting(
        8, "WebSocket requests a client may send ahead while a generation runs; more and the connection is "
        "closed (bounds the memory a flooding client can hold).", minimum=1)
    graceful_timeout: float = _setting(
        30.0, "On shutdown, seconds running generations get to finish before connections are closed; idle "
        "sockets are told 'Server is shutting down' at once.", minimum=0.0)
    frontend_dir: Path = _setting(REPO_ROOT / "frontend" / "dist", "Folder of the built web app served at '/'.")
    embedded_blocks_servers: int = _setting(1, "Server processes of the embedded swarm (blocks split evenly).",
                                            minimum=1)
    embedded_dtype: str = _setting("auto", "dtype of the embedded swarm's transformer blocks: auto (GPU: float16; "
                                   "CPU: bfloat16 with AVX-512 BF16, else float32), float32, bfloat16 or float16.",
                                   choices=("auto", "float32", "bfloat16", "float16"))
    embedded_port: int = _setting(0, "TCP port of the embedded swarm's first server (0: pick a free one).",
                                  minimum=0, maximum=65535)
    server_batching: bool = _setting(True, "Batch concurrent sessions' decode steps in the embedded swarm's servers "
                                     "(one forward per block for all waiting sessions); 0 gives stock Petals.")
    server_max_batch: int = _setting(64, "Most sessions' decode steps one forward of an embedded server runs.",
                                     minimum=1)
    embedded_cache_tokens: int = _setting(
        0, "Attention cache of each embedded server, in tokens per block (0: a quarter of the memory available at "
        "start, at least Petals' default).", minimum=0)
    debug: bool = _setting(False, "Send Python tracebacks to clients in errors (never in production).")
    log_level: str = _setting("info", "Log level: debug, info, warning or error.",
                              choices=("debug", "info", "warning", "error"))

    # ---- derived helpers -------------------------------------------------
    @property
    def uses_embedded_swarm(self) -> bool:
        return not self.initial_peers


SETTING_FIELDS = tuple(f for f in dataclasses.fields(Settings))


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _split_list(text: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", text.strip()) if part]


def _parse(f: dataclasses.Field, raw: Any) -> Any:
    """Convert a raw string (env/CLI) into the field's type, or raise SettingsError."""
    kind = f.type
    name = f.name
    if not isinstance(raw, str):
        return raw
    try:
        if kind in ("int", int):
            value: Any = int(raw)
        elif kind in ("float", float):
            value = float(raw)
        elif kind in ("bool", bool):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                value = True
            elif lowered in ("0", "false", "no", "off", ""):
                value = False
            else:
                raise ValueError(raw)
        elif kind in ("Path", Path):
            value = Path(raw).expanduser()
        elif kind in ("list[str]",):
            value = _split_list(raw)
        else:
            value = raw.strip()
    except ValueError:
        raise SettingsError(f"invalid setting {name} ({env_name(name)}): {raw!r} is not a valid {kind}") from None
    return value


def _validate(settings: Settings) -> None:
    for f in SETTING_FIELDS:
        value = getattr(settings, f.name)
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise SettingsError(
                f"invalid setting {f.name} ({env_name(f.name)}): {value!r}; choose one of {', '.join(meta['choices'])}")
        if "minimum" in meta and value < meta["minimum"]:
            raise SettingsError(f"invalid setting {f.name} ({env_name(f.name)}): {value!r} is below {meta['minimum']}")
        if "maximum" in meta and value > meta["maximum"]:
            raise SettingsError(f"invalid setting {f.name} ({env_name(f.name)}): {value!r} is above {meta['maximum']}")
    for peer in settings.initial_peers:
        if not peer.startswith("/"):
            raise SettingsError(f"invalid setting initial_peers ({env_name('initial_peers')}): {peer!r} is not a "
                                "multiaddr (expected e.g. /ip4/1.2.3.4/tcp/31337/p2p/12D3Koo...)")
    if not settings.models.is_file():
        raise SettingsError(f"invalid setting models ({env_name('models')}): no such file: {settings.models}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting (generated from the dataclass)."""
    for f in SETTING_FIELDS:
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} Env: {env_name(f.name)}."
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def load_settings(environ: Mapping[str, str] | None = None, cli: Mapping[str, Any] | None = None,
                  **overrides: Any) -> Settings:
    """Build validated settings from defaults < environment < CLI values < keyword overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in SETTING_FIELDS:
        if env_name(f.name) in environ:
            values[f.name] = _parse(f, environ[env_name(f.name)])
        if cli and cli.get(f.name) is not None:
            values[f.name] = _parse(f, cli[f.name])
        if f.name in overrides:
            raw = overrides[f.name]
            values[f.name] = _parse(f, raw) if isinstance(raw, str) else raw
    unknown = set(overrides) - {f.name for f in SETTING_FIELDS}
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    settings = Settings(**values)
    _validate(settings)
    return settings


def markdown_table() -> str:
    """The README's settings table (``python -m backend settings``), generated from the fields."""
    rows = ["| Environment variable | Flag | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in SETTING_FIELDS:
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if isinstance(default, Path):
            default = default.relative_to(REPO_ROOT) if default.is_relative_to(REPO_ROOT) else default
        if isinstance(default, list):
            default = " ".join(default) or "(empty)"
        default = default if default != "" else "(empty)"
        rows.append(f"| `{env_name(f.name)}` | `--{f.name.replace('_', '-')}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(rows)


def parse_cli(argv: Sequence[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m backend", description="Petals Chat backend.")
    add_arguments(parser)
    return vars(parser.parse_args(list(argv)))
