"""Open a GGUF file and read its metadata, turning every reader failure into one error line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf


class ConversionError(Exception):
    """A GGUF file cannot be converted; the message is one line naming the reason."""


_MISSING = object()


def open_reader(path: Path) -> gguf.GGUFReader:
    """Open ``path`` with ``gguf.GGUFReader``; raise ``ConversionError`` if it is not a readable GGUF."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError, ... on bad input
        raise ConversionError(
            f"{path}: not a valid GGUF file, or it is truncated or damaged ({_one_line(exc)})"
        ) from exc
    _check_tensor_extents(reader, path)
    return reader


def _check_tensor_extents(reader: gguf.GGUFReader, path: Path) -> None:
    """Refuse a file whose tensor data runs past its end (a truncated download)."""
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise ConversionError(
                f"{path}: file is truncated (tensor '{tensor.name}' ends at byte "
                f"{tensor.data_offset + tensor.n_bytes}, file has {size} bytes)"
            )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def get_field(reader: gguf.GGUFReader, key: str, default: Any = _MISSING) -> Any:
    """The decoded value of metadata ``key`` (str, number, bool or list).

    Without ``default``, a missing key raises ``ConversionError``.
    """
    field = reader.get_field(key)
    if field is None:
        if default is _MISSING:
            raise ConversionError(f"GGUF metadata key '{key}' is missing")
        return default
    try:
        return field.contents()
    except Exception as exc:
        raise ConversionError(f"GGUF metadata key '{key}' is unreadable ({_one_line(exc)})") from exc


def float32_value(value: float) -> float:
    """A float read as float32 from GGUF, rounded to its shortest float32 decimal (1e-05, not 9.9999e-06)."""
    return float(f"{value:.7g}")
