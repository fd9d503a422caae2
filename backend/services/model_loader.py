"""Load the engine's models in the background and retry the ones that fail.

One model that cannot load (a registry entry whose weights are not reachable
offline, a swarm that does not serve it yet) must not hold the others back:
:class:`ModelLoader` loads every model once on a background thread, then
retries each failed one with capped exponential backoff (``min_backoff``,
doubling after each failure, at most ``max_backoff`` seconds) until it loads
or :meth:`ModelLoader.stop` is called at shutdown.

Each model is in one of three states: ``loading`` (a load is running or has
not started), ``ready``, or ``failed`` (with the one-line error and the time of
the next retry). ``/healthz``, ``/readyz`` and the request paths read them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from ..errors import NotReady

logger = logging.getLogger("backend")

LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(frozen=True)
class LoadState:
    state: str = LOADING
    error: str | None = None  # the last failure's one-line error (kept while a retry runs)
    attempts: int = 0  # load attempts finished so far
    retry_at: float | None = None  # wall-clock time (time.time()) of the next retry when failed

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "ready": self.state == READY, "attempts": self.attempts}
        if self.error and self.state != READY:
            out["error"] = self.error
        if self.state == FAILED and self.retry_at is not None:
            now = time.time() if now is None else now
            out["retry_at"] = datetime.fromtimestamp(self.retry_at, UTC).isoformat(timespec="seconds")
            out["retry_in_s"] = round(max(0.0, self.retry_at - now), 1)
        return out

    def not_ready_error(self, key: str, now: float | None = None) -> NotReady:
        """The one-line error a request for this (not ready) model gets."""
        if self.error is None:
            return NotReady(f"Model {key} is still loading, retry in a moment")
        if self.state == FAILED and self.retry_at is not None:
            wait = max(0.0, self.retry_at - (time.time() if now is None else now))
            return NotReady(f"Model {key} failed to load ({self.error}); retrying in {wait:.0f} s")
        return NotReady(f"Model {key} failed to load ({self.error}); retrying now, retry in a moment")


def backoff(attempts: int, min_backoff: float, max_backoff: float) -> float:
    """Seconds to wait after the ``attempts``-th failure in a row: min_backoff, doubling, capped at max_backoff."""
    return min(max_backoff, min_backoff * 2 ** max(0, min(attempts - 1, 60)))


class ModelLoader:
    """Drives ``engine.load(progress, keys=[...])`` on a daemon thread; see the module docstring."""

    def __init__(self, engine: Any, keys: Iterable[str], *, min_backoff: float = 10.0, max_backoff: float = 300.0,
                 progress: Callable[[str], None] | None = None):
        self.engine = engine
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.progress = progress
        self._lock = threading.Lock()
        statuses = engine.status()
        # an engine may come with models already loaded (e.g. one built by a test)
        self._states = {key: LoadState(READY) if getattr(statuses.get(key), "ready", False) else LoadState()
                        for key in keys}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop retrying; wait up to ``timeout`` s for a load in progress (it is abandoned after that)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- queries ------------------------------------------------------------
    def states(self) -> dict[str, LoadState]:
        with self._lock:
            return dict(self._states)

    def state(self, key: str) -> LoadState:
        with self._lock:
            return self._states.get(key, LoadState())

    def check(self, key: str) -> None:
        """Raise :class:`NotReady` (one line: loading, or failed and when the retry comes) unless ``key`` is ready."""
        state = self.state(key)
        if state.state != READY:
            raise state.not_ready_error(key)

    # -- the thread ---------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            with self._lock:
                due = [key for key, s in self._states.items()
                       if s.state != READY and (s.retry_at is None or s.retry_at <= now)]
                for key in due:
                    self._states[key] = replace(self._states[key], state=LOADING, retry_at=None)
            for key in due:  # one at a time, each model's state updated as soon as its attempt ends
                if self._stop.is_set():
                    return
                self._attempt(key)
            with self._lock:
                waits = [s.retry_at for s in self._states.values() if s.state == FAILED and s.retry_at is not None]
            if not waits and all(s.state == READY for s in self.states().values()):
                return  # everything loaded: nothing left to do
            if waits:
                self._stop.wait(max(0.0, min(waits) - time.time()))

    def _attempt(self, key: str) -> None:
        failure = None
        try:
            self.engine.load(self.progress, keys=[key])
        except Exception as e:  # an engine that fails as a whole fails the model it was loading
            failure = " ".join(f"{type(e).__name__}: {e}".split())
        status = self.engine.status().get(key)
        with self._lock:
            previous = self._states[key]
            attempts = previous.attempts + 1
            if failure is None and status is not None and status.ready:
                self._states[key] = LoadState(READY, attempts=attempts)
                return
            error = failure or (status.error if status is not None else None) or "the model did not load"
            error = error.splitlines()[0]
            wait = backoff(attempts, self.min_backoff, self.max_backoff)
            self._states[key] = LoadState(FAILED, error=error, attempts=attempts, retry_at=time.time() + wait)
        logger.warning("model %s failed to load (attempt %d): %s; retrying in %.0f s", key, attempts, error, wait)
