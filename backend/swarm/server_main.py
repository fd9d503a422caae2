"""Entry point of one Petals server process: ``python -m backend.swarm.server_main ARGS``.

``python -m petals.cli.run_server`` cannot start on hivemind 1.1.12 (see
``backend.compat``), so every server is started through this wrapper. It also
prints :data:`READY_MARKER` once the server's blocks are loaded and announced
online, which the launcher waits for, and asks the kernel to end this process
when its parent dies (no orphaned servers if the launcher is killed).

Two flags of its own come before Petals' flags are parsed (see
:mod:`backend.swarm.batching`): ``--max_batch_sessions N`` (default 64) caps how
many sessions' decode steps run as one forward, and ``--no_batching`` gives
stock Petals behaviour, and ``--max_batch_wait_ms`` (default 20) bounds how long
the pool waits for the rest of a group it has seen before (never for a lone
session), and ``--max_batch_tokens`` (default 512) caps the new tokens of one
group (prefills that arrive together share a forward). ``--no_rewind`` leaves
out :mod:`backend.swarm.session_rewind` (steps that start at an earlier position
of their session, for the prompt cache).
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import sys

READY_MARKER = "PETALS_CHAT_SERVER_READY"


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the launcher's process-group kill still applies
        pass


def parse_own_flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split this wrapper's flags from the Petals server's."""
    from .batching import DEFAULT_MAX_SESSIONS, DEFAULT_MAX_TOKENS, DEFAULT_MAX_WAIT_MS

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--no_batching", action="store_true")
    parser.add_argument("--no_rewind", action="store_true")
    parser.add_argument("--max_batch_sessions", type=int, default=DEFAULT_MAX_SESSIONS)
    parser.add_argument("--max_batch_wait_ms", type=float, default=DEFAULT_MAX_WAIT_MS)
    parser.add_argument("--max_batch_tokens", type=int, default=DEFAULT_MAX_TOKENS)
    own, rest = parser.parse_known_args(argv)
    if own.max_batch_sessions < 1 or own.max_batch_tokens < 1:
        parser.error("--max_batch_sessions and --max_batch_tokens must be at least 1")
    return own, rest


def main(argv: list[str]) -> None:
    _die_with_parent()
    own, argv = parse_own_flags(argv)
    from backend.compat import apply

    apply()
    if not own.no_batching and own.max_batch_sessions > 1:
        from . import batching

        try:
            batching.install(own.max_batch_sessions, own.max_batch_wait_ms, own.max_batch_tokens)
            argv = batching.server_args(argv)
            print(f"Batched decoding on: up to {own.max_batch_sessions} sessions per forward", flush=True)
        except batching.UnsupportedPetals as e:
            print(f"Batched decoding off: {e}", flush=True)
    if not own.no_rewind:
        from . import session_rewind

        session_rewind.install()  # after batching's version check: it marks the announced version
    from petals.server import server as server_module

    original = server_module.ModuleContainer.run_in_background

    def run_in_background(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        print(READY_MARKER, flush=True)
        return result

    server_module.ModuleContainer.run_in_background = run_in_background
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    from petals.cli import run_server

    sys.argv = ["petals.cli.run_server", *argv]
    run_server.main()


if __name__ == "__main__":
    main(sys.argv[1:])
