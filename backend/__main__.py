"""Command line: ``python -m backend [serve|swarm|model] ...``.

* ``python -m backend [FLAGS]`` (or ``serve``): run the app; ``--help`` lists every setting.
* ``python -m backend swarm MODEL_PATH [--servers N | --blocks A:B ...] [--initial-peers MADDR ...]``: Petals
  servers for a model, in a new swarm or joining an existing one.
* ``python -m backend model prepare [--gguf FILE]``: download/convert the embedded model.
* ``python -m backend settings``: the settings table (Markdown) for the README.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv and argv[0] == "model":
        from .embedded.cli import main as model_main

        return model_main(argv[1:])
    if argv and argv[0] == "swarm":
        from .swarm.cli import main as swarm_main

        return swarm_main(argv[1:])
    if argv and argv[0] == "settings":  # the README's settings table
        from .settings import markdown_table

        print(markdown_table())
        return 0
    if argv and argv[0] == "serve":
        argv = argv[1:]

    from .serve import configure_logging, serve
    from .settings import SettingsError, load_settings, parse_cli

    try:
        settings = load_settings(cli=parse_cli(argv))
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    return serve(settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
