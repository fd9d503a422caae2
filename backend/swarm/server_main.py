"""Entry point of one Petals server process: ``python -m backend.swarm.server_main ARGS``.

``python -m petals.cli.run_server`` cannot start on hivemind 1.1.12 (see
``backend.compat``), so every server is started through this wrapper. It also
prints :data:`READY_MARKER` once the server's blocks are loaded and announced
online, which the launcher waits for, and asks the kernel to end this process
when its parent dies (no orphaned servers if the launcher is killed).
"""

from __future__ import annotations

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


def main(argv: list[str]) -> None:
    _die_with_parent()
    from backend.compat import apply

    apply()
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
