"""A Petals session's finalizer never waits on hivemind's worker loop (issue 15): after Ctrl-C the loop may no
longer run, and a finalizer that waited kept ``python -m backend`` alive for good."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stopped_worker_loop():
    """hivemind's worker as it is after shutdown: its loop exists (and its thread object) but does not run."""
    from backend.compat import import_petals

    import_petals()
    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    from backend.engine import petals_patches

    petals_patches.apply()
    saved = (RemoteExpertWorker._event_thread, RemoteExpertWorker._event_loop_fut, RemoteExpertWorker._pid)
    loop = asyncio.new_event_loop()
    future = concurrent.futures.Future()
    future.set_result(loop)
    RemoteExpertWorker._event_thread = threading.Thread(target=lambda: None)
    RemoteExpertWorker._event_loop_fut, RemoteExpertWorker._pid = future, os.getpid()
    try:
        yield loop
    finally:
        RemoteExpertWorker._event_thread, RemoteExpertWorker._event_loop_fut, RemoteExpertWorker._pid = saved
        loop.close()


def test_finalizers_return_when_the_worker_loop_is_gone(stopped_worker_loop):
    from petals.client.inference_session import InferenceSession, _ServerInferenceSession

    server_session = object.__new__(_ServerInferenceSession)
    server_session._outputs_stream, server_session.closed = object(), False
    session = object.__new__(InferenceSession)
    session._closed, session._server_sessions = False, [object.__new__(_ServerInferenceSession)]
    session._server_sessions[0]._outputs_stream, session._server_sessions[0].closed = object(), False

    def finalize():
        server_session.__del__()
        session.__del__()

    thread = threading.Thread(target=finalize, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a finalizer waits on a loop that no longer runs"
    assert server_session.closed and session._closed and session._server_sessions[0].closed
