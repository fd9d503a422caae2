"""The chat page in a real browser against a live backend, and the front end's unit tests.

`live_server` (tests/conftest.py) runs Hypercorn with a local Petals swarm and serves the built
`frontend/dist`. The browser tests are `frontend/e2e/*.test.mjs` (node:test + playwright-core
driving Debian's Chromium); they need `npm ci` in frontend/ and `apt-get install chromium`.
They fail, never skip, when something is missing. `frontend/e2e/queue.e2e.mjs` needs a backend of
its own (one generation at a time), started here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONTEND = ROOT / "frontend"
CHROMIUM_PATH = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
E2E_TIMEOUT_S = int(os.environ.get("E2E_TIMEOUT_S", "1200"))
UNIT_TIMEOUT_S = int(os.environ.get("FRONTEND_UNIT_TIMEOUT_S", "600"))
OUTPUT_TAIL = 20_000


def _require(path: Path | str, what: str, fix: str) -> None:
    if not Path(path).exists():
        pytest.fail(f"{what} is missing ({path}): {fix}")


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(f"`{name}` is not on PATH: install Node.js 20.19 or newer")
    return found


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: int) -> tuple[int, str]:
    """Runs cmd in its own process group; on timeout kills the group and reports the output."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s\n{output[-OUTPUT_TAIL:]}")
    return proc.returncode, output


def _artifacts_dir() -> Path:
    path = Path(os.environ.get("ARTIFACTS_DIR", ROOT / "test-artifacts")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_frontend_unit_tests() -> None:
    """Vitest: socket client on canned frames, prompt rendering, markdown safety, stores."""
    npm = _tool("npm")
    _require(FRONTEND / "node_modules", "frontend/node_modules", "run `npm ci` in frontend/")
    env = {**os.environ, "CI": "true", "NO_COLOR": "1"}
    code, output = _run([npm, "test"], cwd=FRONTEND, env=env, timeout=UNIT_TIMEOUT_S)
    assert code == 0, f"`npm test` failed (exit {code}):\n{output[-OUTPUT_TAIL:]}"


def _run_e2e(base_url: str, files: list[str]) -> None:
    """The browser tests in ``files`` (node:test) against the backend at ``base_url``."""
    node = _tool("node")
    _require(FRONTEND / "node_modules" / "playwright-core", "playwright-core", "run `npm ci` in frontend/")
    _require(CHROMIUM_PATH, "Chromium", "run `apt-get install -y chromium` or set CHROMIUM_PATH")
    _require(FRONTEND / "dist" / "index.html", "The built page", "run `npm run build` in frontend/")
    env = {
        **os.environ,
        "BASE_URL": base_url.rstrip("/"),
        "ARTIFACTS_DIR": str(_artifacts_dir()),
        "CHROMIUM_PATH": CHROMIUM_PATH,
        "NO_COLOR": "1",
    }
    code, output = _run([node, "--test", "--test-concurrency=1", *files], cwd=ROOT, env=env, timeout=E2E_TIMEOUT_S)
    assert code == 0, f"browser tests failed (exit {code}):\n{output[-OUTPUT_TAIL:]}"


def test_chat_page_in_browser(live_server) -> None:
    """Streaming, stop, reload, model switch, error + retry, injection, CSP, theme screenshots, the swarm panel.

    ``E2E_FILES`` (space-separated paths) runs some of the browser tests only, e.g. ``frontend/e2e/swarm.test.mjs``."""
    _run_e2e(live_server.url, os.environ.get("E2E_FILES", "frontend/e2e/").split())


def test_queued_note_in_browser(tmp_path, swarm, test_registry) -> None:
    """With one generation slot, a second page's message waits in line behind a long answer: the page shows
    "Queued, position 1…", then the answer once the first page stops (``frontend/e2e/queue.e2e.mjs``)."""
    from reliability_helpers import backend, backend_env

    env = backend_env(swarm, test_registry, frontend_dir=FRONTEND / "dist", max_concurrent_generations=1,
                      queue_timeout=120, prompt_cache_sessions=0, reattach_window=5)
    with backend(tmp_path, env) as server:
        _run_e2e(server.url, ["frontend/e2e/queue.e2e.mjs"])
