"""The fake engine shared by in-process tests of the app (no Petals, no swarm).

Renders and counts by characters; streams 'ab', pauses, then fails like a swarm that went away.
Models load through ``load()`` as the real engine's do: ``ready=False`` leaves every model loading
for ever; ``failures={"key": n}`` makes the first ``n`` load attempts of that model fail (-1: every
attempt) with ``error``; with ``gate`` (a threading.Event) every load waits until it is set. Models
that neither wait nor fail are ready from the start.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from types import SimpleNamespace

from backend.engine.types import Chunk, ModelStatus, SessionHistory
from backend.errors import NotReady, SwarmError

MODELS = ("tiny", "tiny-private")  # the keys of conftest's test registry
FAKE_PEERS = ("12D3KooWFakeServerNumberOneAAAAAA", "12D3KooWFakeServerNumberTwoBBBBBB")  # route() and swarm()


class FakeEngine:
    def __init__(self, ready: bool = True, *, failures: dict[str, int] | None = None,
                 error: str = "OSError: cannot reach the weights offline", models: tuple[str, ...] = MODELS,
                 gate: threading.Event | None = None):
        self.ready = ready
        self.gate = gate
        self.failures = dict(failures or {})
        self.error = error
        self.open_sessions = 0
        self.load_attempts: Counter[str] = Counter()
        self.load_threads: set[str] = set()
        self.shut_down = False
        self.swarm_reads = 0
        self.rewinds = False  # sessions may be rewound (Engine.rewind)
        # what each server of swarm() announces (Petals' units: a session of L tokens takes 2 * L * 2 on a server of 2
        # blocks); None: no announcement. By default room for far more than any test reserves.
        self.cache_tokens_left: int | None = 1 << 20
        self._status = {key: ModelStatus(key=key, ready=ready and gate is None and key not in self.failures)
                        for key in models}

    def load(self, progress=None, keys=None):
        self.load_threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait()
        for key in keys if keys is not None else list(self._status):
            status = self._status[key]
            self.load_attempts[key] += 1
            left = self.failures.get(key, 0)
            if left:
                self.failures[key] = left - 1 if left > 0 else left
                status.error = self.error
            elif self.ready:
                status.ready, status.error = True, None

    def status(self):
        return self._status

    async def readiness(self):
        return {key: {"ready": s.ready, "servers": 1, "blocks_served": 4, "blocks_total": 4, "swarm_ok": True}
                for key, s in self._status.items() if s.ready}

    def _check(self, model_key):
        if not self._status[model_key].ready:
            raise NotReady(f"Model {model_key} is not ready, retry later")

    def count_tokens(self, model_key, text):
        self._check(model_key)
        return len(text)

    def token_ids(self, model_key, text):
        self._check(model_key)
        return [ord(c) for c in text]

    def render_chat(self, model_key, messages):
        self._check(model_key)
        return "".join(m["content"] for m in messages)

    async def open_session(self, model_key, max_length):
        self._check(model_key)
        self.open_sessions += 1
        return SimpleNamespace(model_key=model_key, max_length=max_length, length=0, ids=[], closed=False)

    async def close_session(self, session):
        self.open_sessions -= 1
        session.closed = True

    def session_history(self, session):
        """Tests give a session its tokens (``session.ids``); all but the last are 'computed', as in Petals."""
        if session.closed or not session.ids:
            return None
        return SessionHistory(ids=tuple(session.ids), computed=len(session.ids) - 1, rewinds=self.rewinds)

    def rewind(self, session, keep):
        assert self.rewinds and 1 <= keep <= len(session.ids)
        session.ids = session.ids[:keep]
        session.length = keep

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        yield Chunk(text="a", tokens=1)
        yield Chunk(text="b", tokens=1)
        await asyncio.sleep(0.3)  # longer than the app's response timeout in test_openai_api
        raise SwarmError("Swarm error: the server went away")

    def route(self, session):
        return [{"peer_id": FAKE_PEERS[0], "start": 0, "end": 2}, {"peer_id": FAKE_PEERS[1], "start": 2, "end": 4}]

    async def swarm(self, model_key):
        self._check(model_key)
        self.swarm_reads += 1
        servers = [{"peer_id": peer, "short_id": "..." + peer[-6:], "start": start, "end": start + 2,
                    "spans": [[start, start + 2]], "state": "online", "throughput": 10.0, "inference_rps": None,
                    "cache_tokens_left": self.cache_tokens_left, "version": "2.2.0", "public_name": None,
                    "torch_dtype": "float32", "using_relay": False}
                   for peer, start in zip(FAKE_PEERS, (0, 2), strict=True)]
        return {"model": model_key, "blocks_total": 4, "blocks_served": 4, "swarm_ok": True, "servers": servers}

    def shutdown(self):
        self.shut_down = True


def in_process_app(engine, registry_path, **settings):
    """``create_app`` on ``engine`` with the registry at ``registry_path`` and these settings."""
    from backend.app import create_app
    from backend.settings import load_settings

    return create_app(load_settings(environ={}, models=registry_path, **settings), engine=engine)


def run_in_app(app, scenario):
    """Run ``await scenario(test_client)`` inside ``app``'s serving lifecycle (Quart's test app); its result."""

    async def main():
        async with app.test_app() as test_app:
            return await scenario(test_app.test_client())

    return asyncio.run(main())


def swarm_errors(app) -> float:
    """The app's petals_chat_swarm_errors_total."""
    return app.extensions["petals_chat"].metrics.registry.get_sample_value("petals_chat_swarm_errors_total")
