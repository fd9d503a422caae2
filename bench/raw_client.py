"""The limit: the Petals client in this process, driven the way the backend drives it.

One ``InferenceSession`` per stream and one ``model.generate()`` call with a
streamer that timestamps each token, on plain threads for concurrency.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .stats import Stream


class _Streamer:
    def __init__(self, stream: Stream):
        self.stream = stream
        self._prompt_seen = False
        self.ids: list[int] = []

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        self.ids += ids
        self.stream.add(time.perf_counter(), len(ids))

    def end(self) -> None:
        pass


def patch_server_session_del() -> None:
    """Work around a Petals 2.2 deadlock seen in this harness.

    ``_ServerInferenceSession.__del__`` calls ``close()``, which blocks on
    ``RemoteExpertWorker.run_coroutine``. When the garbage collector runs it on
    that worker's own event-loop thread (a cycle collected during another
    session's ``create``), the loop waits on itself forever and every later
    step hangs. There, the stream is closed in the background instead.
    """
    import asyncio

    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker
    from petals.client.inference_session import _ServerInferenceSession

    if getattr(_ServerInferenceSession, "_bench_patched", False):
        return

    def __del__(self):
        if getattr(self, "_outputs_stream", None) is None:
            return
        if threading.current_thread() is getattr(RemoteExpertWorker, "_event_thread", None):
            try:
                asyncio.get_event_loop().create_task(self._aclose_stream())
            except Exception:
                pass
            return
        self.close()

    _ServerInferenceSession.__del__ = __del__
    _ServerInferenceSession._bench_patched = True


class RawClient:
    def __init__(self, model_path: str, peers: list[str], dht_prefix: str, dtype: str = "float32"):
        from backend.compat import import_petals

        import_petals()
        patch_server_session_del()
        import logging

        import torch
        from petals import AutoDistributedModelForCausalLM
        from transformers import AutoTokenizer

        for name in ("petals", "hivemind"):  # per-request INFO lines would bury the progress bar
            logging.getLogger(name).setLevel(logging.WARNING)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoDistributedModelForCausalLM.from_pretrained(
            model_path, initial_peers=peers, dht_prefix=dht_prefix, torch_dtype=getattr(torch, dtype))
        self.model.eval()
        self.eos = self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompt: str, max_new_tokens: int, stream: Stream | None = None,
                 stop_at_eos: bool = True) -> tuple[Stream, list[int]]:
        """One stream in a fresh session sized like the WebSocket client's (prompt + new tokens)."""
        from petals.client.inference_session import InferenceSession

        torch = self.torch
        stream = stream or Stream()
        ids = self.encode(prompt)
        session = InferenceSession(self.model.transformer.h.sequence_manager, max_length=len(ids) + max_new_tokens)
        streamer = _Streamer(stream)
        kwargs: dict[str, Any] = {} if stop_at_eos else {"eos_token_id": None}
        try:
            stream.sent = time.perf_counter()
            with torch.inference_mode():
                self.model.generate(torch.tensor([ids]), session=session, max_new_tokens=max_new_tokens,
                                    do_sample=False, streamer=streamer, pad_token_id=self.eos, **kwargs)
        except Exception as e:  # recorded, never raised: a benchmark counts errors
            stream.error = f"{type(e).__name__}: {e}".splitlines()[0]
        finally:
            try:
                session.close()
            except Exception:
                pass
        return stream, streamer.ids

    def concurrent(self, prompt: str, max_new_tokens: int, sessions: int) -> list[Stream]:
        """``sessions`` streams at once, one thread each, started together."""
        streams = [Stream() for _ in range(sessions)]
        barrier = threading.Barrier(sessions)

        def run(s: Stream) -> None:
            barrier.wait()
            self.generate(prompt, max_new_tokens, s)

        threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return streams

    def answer(self, question: str, max_new_tokens: int = 24) -> str:
        """The greedy chat answer (ChatML template), for correctness checks."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                  add_generation_prompt=True)
        _, ids = self.generate(text, max_new_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=True)
