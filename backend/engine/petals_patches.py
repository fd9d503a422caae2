"""Fixes for Petals 2.2 client bugs, applied once before any model is loaded.

* Replacing a failed server in the middle of an inference session (petals issue
  #587). When a server dies, ``InferenceSession._update_sequence`` opens a
  session on another server holding the same blocks and gives it the failed
  session's input history, so that the new server can rebuild its attention
  caches. But the new session starts at position 0 while the history already
  holds every earlier token (and the current step's): its next step fails with
  ``AssertionError: Broken input cache`` and the generation is lost, although
  a replacement server exists. The fix hands over the history up to the failed
  session's confirmed position together with that position; the new session's
  first step then sends the whole history (it has not stepped yet), as Petals
  intends.
* Routing around a failed server. A failed server is banned, but the routing
  table that ``make_sequence`` reads is rebuilt only by the next periodic DHT
  refresh (``update_period``, 60 s by default), so every retry until then may
  pick the same dead server again and the retries run out. A server that cannot
  even be connected to is not banned at all (the failure carries no peer). With
  the fix, a failure bans the peer it came from and refreshes the table before
  the next attempt.
* Finalizers that deadlock the client. A server session that is garbage-collected
  while still open closes itself in ``__del__`` by waiting on a coroutine run by
  hivemind's ``RemoteExpertWorker`` event loop. When the garbage collector happens
  to run on that loop's own thread, the loop waits on itself forever, and every
  generation of the process hangs from then on (seen under load, about one run
  in four of ``tests/test_openapi_fuzz.py``); when it runs on the main thread after
  that loop stopped (Ctrl-C after a chat stream), ``python -m backend`` never exits.
  With the fix, a finalizer never waits: it schedules the close on the loop (when
  one still exists) and returns.
"""

from __future__ import annotations

_applied = False


def apply() -> None:
    global _applied
    if _applied:
        return
    from petals.client.inference_session import InferenceSession

    original = InferenceSession._update_sequence

    def _update_sequence(self, server_idx: int, block_idx: int, attempt_no: int):
        failed = self._server_sessions[server_idx] if server_idx < len(self._server_sessions) else None
        result = original(self, server_idx, block_idx, attempt_no)
        if failed is not None and failed.history is not None:
            replacement = self._server_sessions[server_idx]
            replacement.history = failed.history[:, :failed._position]
            replacement._position = failed._position
        return result

    InferenceSession._update_sequence = _update_sequence

    original_enter = InferenceSession._enter_server_sessions

    def _enter_server_sessions(self, chosen_spans):
        sessions = []
        try:
            for span in chosen_spans:
                try:
                    sessions += original_enter(self, [span])
                except Exception:
                    self._sequence_manager.on_request_failure(span.peer_id)
                    raise
            return sessions
        except BaseException:
            self._exit_server_sessions(sessions)
            raise

    InferenceSession._enter_server_sessions = _enter_server_sessions

    from petals.client.routing.sequence_manager import RemoteSequenceManager

    original_failure = RemoteSequenceManager.on_request_failure

    def on_request_failure(self, peer_id):
        original_failure(self, peer_id)
        if peer_id is not None:
            self.update(wait=False)  # make_sequence() waits for this refresh, which leaves out the banned peer

    RemoteSequenceManager.on_request_failure = on_request_failure
    _finalizers_never_block_the_worker_loop()
    _applied = True


def _finalizers_never_block_the_worker_loop() -> None:
    import contextlib
    import threading

    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from petals.client.inference_session import InferenceSession, _ServerInferenceSession

    def close_later(session: _ServerInferenceSession) -> None:
        """Schedule the close on the worker loop; never wait for it (the loop may be gone, or be this thread)."""
        if session._outputs_stream is None or session.closed:
            return
        session.closed = True
        future = RemoteExpertWorker._event_loop_fut
        if future is None or not future.done() or future.exception() is not None:
            return  # no worker loop in this process: nothing to close on
        loop = future.result()
        if loop.is_closed():
            return
        if threading.current_thread() is RemoteExpertWorker._event_thread:
            loop.create_task(session._aclose_stream())
        else:
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(lambda: loop.create_task(session._aclose_stream()))

    def server_session_del(self) -> None:
        close_later(self)

    def inference_session_del(self) -> None:
        if not self._closed:
            self._closed = True
            for server_session in self._server_sessions:
                close_later(server_session)

    _ServerInferenceSession.__del__ = server_session_del
    InferenceSession.__del__ = inference_session_del
