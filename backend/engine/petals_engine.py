"""The Petals implementation of the engine: the only module that drives Petals.

One tokenizer and one distributed model per registry entry (aliases share
them). A generation is ONE ``model.generate()`` call inside the session's
Petals ``InferenceSession``, running on a worker thread of a bounded pool; a
streamer forwards each token to the event loop as it is produced, and a
stopping criterion ends the call when the text ends with a stop sequence, the
budget is reached or the consumer went away.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..compat import import_petals
from ..errors import (
    CACHE_FULL,
    MAX_LENGTH_EXCEEDED,
    BadRequest,
    Busy,
    CacheFull,
    LengthExceeded,
    NotReady,
    SamplingFailed,
    SwarmError,
    UnknownModel,
)
from ..registry import ModelSpec
from . import coalesced_head, grammar, petals_patches, plain_text, rewind, swarm_map
from .detokenizer import IncrementalDetokenizer
from .device import resolve_device, resolve_dtype
from .types import Chunk, ModelStatus, SamplingParams, SessionHistory, TokenLogprob

logger = logging.getLogger(__name__)

_DONE = object()
_TOKEN_CACHE_SIZE = 8


@dataclass
class _Loaded:
    spec: ModelSpec
    tokenizer: Any
    model: Any
    eos_token_id: int | None


@dataclass(eq=False)
class PetalsSession:
    """An open inference session: a Petals InferenceSession plus our bookkeeping."""

    id: int
    model_key: str
    max_length: int
    inner: Any
    busy: asyncio.Future | None = None
    closing: asyncio.Future | None = None
    closed: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def length(self) -> int:
        ids = self.inner.output_ids
        return 0 if ids is None else int(ids.shape[1])

    def context_ids(self, n: int = 8) -> list[int]:
        ids = self.inner.output_ids
        return [] if ids is None else ids[0, -n:].tolist()


class _LogprobRecorder:
    """A logits processor that keeps the log-probabilities of the step (after repetition_penalty, before
    temperature, top-p and any grammar), so the streamer can report the chosen token's and the best ones."""

    def __init__(self, tokenizer: Any, top_n: int):
        self._tokenizer = tokenizer
        self._top_n = top_n
        self._last: Any = None

    def __call__(self, input_ids, scores):
        import torch

        self._last = torch.log_softmax(scores[-1].float(), dim=-1)
        return scores

    def entry(self, token_id: int) -> TokenLogprob:
        return logprob_entry(self._tokenizer, self._last, token_id, self._top_n)


def logprob_entry(tokenizer: Any, logprobs: Any, token_id: int, top_n: int) -> TokenLogprob:
    """``token_id``'s entry from one position's log-probabilities (a 1-D tensor)."""
    top = ()
    if top_n > 0:
        values, ids = logprobs.topk(top_n)
        top = tuple((tokenizer.decode([i]), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True))
    return TokenLogprob(token_id=token_id, token=tokenizer.decode([token_id]), logprob=float(logprobs[token_id]),
                        top=top)


class _TokenStreamer:
    """transformers streamer + stopping criterion in one: runs on the worker thread."""

    def __init__(self, detok: IncrementalDetokenizer, emit: Callable[[Chunk], None], *, budget: int,
                 stop_sequences: list[str], eos_token_id: int | None, cancel: threading.Event,
                 logprobs: _LogprobRecorder | None = None):
        self._logprobs = logprobs
        self._detok = detok
        self._emit = emit
        self._budget = budget
        self._stops = [s for s in stop_sequences if s]
        self._eos = eos_token_id
        self._cancel = cancel
        self._tail = ""  # the last characters of the text, for stop matching
        self._tail_len = max((len(s) for s in self._stops), default=0) + 8
        self._skipped_prompt = False
        self.generated = 0
        self.finished: str | None = None

    # -- transformers BaseStreamer interface --
    def put(self, value) -> None:
        if not self._skipped_prompt:  # generate() first puts the whole prompt
            self._skipped_prompt = True
            return
        token_ids = value.reshape(-1).tolist()
        self.generated += len(token_ids)
        text = self._detok.push(token_ids)
        matched = None
        if text:
            self._tail = (self._tail + text)[-self._tail_len:]
            matched = next((s for s in self._stops if self._tail.endswith(s)), None)
        reason = None
        if matched is not None or (self._eos is not None and token_ids[-1] == self._eos):
            reason = "stop"
        elif self.generated >= self._budget:
            reason = "length"
        elif self._cancel.is_set():
            reason = "cancelled"
        if reason is not None:
            text += self._detok.flush()
            self.finished = reason
        logprobs = tuple(self._logprobs.entry(t) for t in token_ids) if self._logprobs else ()
        self._emit(Chunk(text=text, tokens=len(token_ids), held=self._detok.held_tokens > 0,
                         finish_reason=reason, matched_stop=matched, logprobs=logprobs))

    def end(self) -> None:
        pass

    # -- StoppingCriteria interface --
    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.finished is not None or self._cancel.is_set()


class PetalsEngine:
    """Loads models through the Petals client and runs generations on a bounded thread pool."""

    def __init__(self, specs: list[ModelSpec], *, initial_peers: list[str], device: str = "auto",
                 dtype: str = "auto", request_timeout: float = 180.0, max_retries: int = 8,
                 max_concurrent_generations: int = 64, client_config: dict[str, Any] | None = None):
        self._specs = {s.key: s for s in specs}
        # Further Petals ClientConfig fields (min_backoff, max_backoff, ban_timeout, update_period, ...)
        self._client_config = dict(client_config or {})
        self._initial_peers = list(initial_peers)
        self._device_policy = device
        self._dtype_policy = dtype
        self._request_timeout = request_timeout
        self._max_retries = max_retries
        self._loaded: dict[str, _Loaded] = {}
        self._status = {s.key: ModelStatus(key=s.key) for s in specs}
        self._sessions: set[PetalsSession] = set()
        self._ids = itertools.count(1)
        self._max_generations = max_concurrent_generations
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent_generations,
                                            thread_name_prefix="petals-generate")
        self._running = 0
        self._lock = threading.Lock()
        self._token_cache: dict[tuple[str, int], tuple[str, list[int]]] = {}
        self._closed = False
        self.device = "cpu"

    # ---------------------------------------------------------------- loading
    def load(self, progress: Callable[[str], None] | None = None, keys: list[str] | None = None) -> None:
        """Load the models named by ``keys`` (default: every model not loaded yet); blocking: call from a thread.

        Failures mark the model not ready with a one-line error (``status()``); a later call retries them
        (``backend.services.model_loader`` does, with backoff).
        """
        keys = [k for k in (self._specs if keys is None else keys) if k not in self._loaded]
        try:
            import_petals()
            petals_patches.apply()
            from petals import AutoDistributedModelForCausalLM
            from transformers import AutoTokenizer

            self.device = resolve_device(self._device_policy)
        except Exception as e:  # nothing can load: say so on every model asked for
            for key in keys:
                self._status[key].error = f"{type(e).__name__}: {e}".splitlines()[0]
            raise
        for key in keys:
            if self._closed or not self._load_one(key, AutoDistributedModelForCausalLM, AutoTokenizer, progress):
                return

    def _load_one(self, key: str, model_class: Any, tokenizer_class: Any,
                  progress: Callable[[str], None] | None) -> bool:
        """Load one model and mark it ready, or record its one-line error; False once the engine shut down meanwhile."""
        spec = self._specs[key]
        status = self._status[key]
        model = None
        try:
            if progress:
                progress(f"loading {key} from {spec.repository}")
            tokenizer = tokenizer_class.from_pretrained(spec.repository)
            dtype = resolve_dtype(self._dtype_policy, self.device)
            model = model_class.from_pretrained(spec.repository, **self._model_kwargs(spec, dtype))
            model = model.to(self.device)
            model.eval()
            coalesced_head.install(model)  # concurrent sessions share one LM-head matmul per token
            eos = tokenizer.eos_token_id
            loaded = _Loaded(spec=spec, tokenizer=tokenizer, model=model, eos_token_id=eos)
            with self._lock:
                if self._closed:  # shut down while this model loaded: it must not outlive the app
                    _stop_dht(model)
                    return False
                self._loaded[key] = loaded
            status.chat_template = getattr(tokenizer, "chat_template", None)
            status.details = {"dtype": str(dtype).replace("torch.", ""), "device": self.device,
                              "blocks": int(model.config.num_hidden_layers)}
            status.ready = True
            status.error = None
            logger.info("model %s ready (device=%s, dtype=%s)", key, self.device, dtype)
        except Exception as e:  # one bad entry must not take the others down
            if model is not None:
                _stop_dht(model)
            status.error = f"{type(e).__name__}: {e}".splitlines()[0]
            logger.warning("model %s failed to load: %s", key, status.error)
        return True

    def _model_kwargs(self, spec: ModelSpec, dtype: Any) -> dict[str, Any]:
        """from_pretrained's arguments for one registry entry."""
        kwargs: dict[str, Any] = dict(initial_peers=self._initial_peers or None,
                                      torch_dtype=dtype,
                                      request_timeout=self._request_timeout,
                                      max_retries=self._max_retries or None)
        kwargs.update(self._client_config)
        if spec.dht_prefix:
            kwargs["dht_prefix"] = spec.dht_prefix
        if spec.adapter:
            kwargs["active_adapter"] = spec.adapter
        if not self._initial_peers:
            kwargs.pop("initial_peers")
        return kwargs

    def shutdown(self) -> None:
        """Close sessions and stop each model's DHT process and p2pd (nothing may outlive the app)."""
        for session in list(self._sessions):
            self._close_now(session)
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True  # a load still running stops its model's DHT instead of keeping it
            loaded_models = list(self._loaded.values())
            self._loaded.clear()
        for loaded in loaded_models:
            _stop_dht(loaded.model)

    # ---------------------------------------------------------------- queries
    def status(self) -> dict[str, ModelStatus]:
        return self._status

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def _get(self, model_key: str) -> _Loaded:
        if model_key not in self._specs:
            raise UnknownModel(f"Unknown model: {model_key}")
        loaded = self._loaded.get(model_key)
        if loaded is None:
            error = self._status[model_key].error
            raise NotReady(f"Model {model_key} is not ready" + (f": {error}" if error else ", retry later"))
        return loaded

    def token_ids(self, model_key: str, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS); a :class:`Prompt`'s message content is tokenized as plain text.

        The last few results are remembered (by the text object itself), so the count made while planning
        and the ids a generation needs cost one tokenization.
        """
        key = (model_key, id(text))
        cached = self._token_cache.get(key)
        if cached is not None and cached[0] is text:
            return cached[1]
        ids = plain_text.encode(self._get(model_key).tokenizer, text)
        with self._lock:
            self._token_cache[key] = (text, ids)
            while len(self._token_cache) > _TOKEN_CACHE_SIZE:
                self._token_cache.pop(next(iter(self._token_cache)))
        return ids

    def vocab_size(self, model_key: str) -> int:
        return len(self._get(model_key).tokenizer)

    def count_tokens(self, model_key: str, text: str) -> int:
        return len(self.token_ids(model_key, text))

    def decode(self, model_key: str, ids: list[int]) -> str:
        return self._get(model_key).tokenizer.decode(ids)

    def render_chat(self, model_key: str, messages: list[dict[str, Any]], tools: list[dict] | None = None) -> str:
        return plain_text.render_chat(self._get(model_key).tokenizer, messages, tools)

    def template_takes_tools(self, model_key: str) -> bool:
        """Whether the model's chat template renders tool definitions (its source uses ``tools``)."""
        return plain_text.template_takes_tools(self._get(model_key).tokenizer)

    async def prompt_logprobs(self, model_key: str, ids: list[int], top_n: int) -> list[TokenLogprob]:
        """Each token's log-probability given the tokens before it (the first has none: it is left out), from one
        forward pass over ``ids`` through the swarm, without an inference session."""
        loaded = self._get(model_key)

        def run() -> list[TokenLogprob]:
            import torch

            with torch.inference_mode():
                logits = loaded.model(torch.tensor([ids], dtype=torch.long)).logits[0].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                return [logprob_entry(loaded.tokenizer, logprobs[i - 1], ids[i], top_n) for i in range(1, len(ids))]

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except Exception as e:
            raise _translate(e) from None

    async def readiness(self) -> dict[str, Any]:
        """Per-model swarm details: servers and blocks covered (blocking DHT reads off the loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._readiness_blocking)

    def _readiness_blocking(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, status in self._status.items():
            entry: dict[str, Any] = {"ready": status.ready, **status.details}
            if status.error:
                entry["error"] = status.error
            loaded = self._loaded.get(key)
            if loaded is not None:
                try:
                    from petals.data_structures import ServerState
                    from petals.utils.dht import get_remote_module_infos

                    manager = loaded.model.transformer.h.sequence_manager
                    infos = get_remote_module_infos(manager.dht, manager.block_uids, latest=True,
                                                    return_future=True).result(timeout=10)
                    online = [{peer for peer, server in (info.servers if info else {}).items()
                               if server.state == ServerState.ONLINE} for info in infos]
                    covered = sum(1 for peers in online if peers)
                    entry.update(servers=len(set().union(*online)), blocks_served=covered,
                                 blocks_total=len(infos), swarm_ok=covered == len(infos))
                except Exception as e:
                    entry.update(swarm_ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0])
            out[key] = entry
        return out

    # ---------------------------------------------------------------- sessions
    async def open_session(self, model_key: str, max_length: int) -> PetalsSession:
        from petals.client.inference_session import InferenceSession

        loaded = self._get(model_key)
        # Not model.inference_session(): that context manager also activates the session in the
        # current context; ours is passed explicitly to generate() on a worker thread.
        inner = InferenceSession(loaded.model.transformer.h.sequence_manager, max_length=max_length)
        session = PetalsSession(id=next(self._ids), model_key=model_key, max_length=max_length, inner=inner)
        self._sessions.add(session)
        return session

    async def close_session(self, session: PetalsSession) -> None:
        """Close a session; safe to call twice and robust to the caller being cancelled."""
        if session.closing is None:
            session.cancel.set()
            session.closing = asyncio.ensure_future(self._close(session))
        await asyncio.shield(session.closing)

    async def _close(self, session: PetalsSession) -> None:
        if session.busy is not None:  # let the running generate() notice the cancellation first
            await asyncio.wait({session.busy})
        await asyncio.get_running_loop().run_in_executor(None, self._close_now, session)

    def _close_now(self, session: PetalsSession) -> None:
        if session.closed:
            return
        session.closed = True
        self._sessions.discard(session)
        try:
            session.inner.close()
        except Exception:
            logger.debug("closing session %s failed", session.id, exc_info=True)

    def replace_last_token(self, session: PetalsSession, text: str) -> None:
        """Rewind: make the session's last token ``text`` (one token), as if it had been generated."""
        ids = self.token_ids(session.model_key, text)
        if len(ids) != 1:
            raise BadRequest(f"{text!r} is not exactly one token")
        if session.inner.output_ids is not None:
            import torch

            with torch.inference_mode():  # output_ids is an inference tensor
                session.inner.output_ids[0, -1] = ids[0]

    def session_history(self, session: PetalsSession) -> SessionHistory | None:
        """The session's tokens (``output_ids``) when the servers hold all but the last of them, as they do after
        every generate() that returned (Petals sends the last token with the next input); else None."""
        inner = session.inner
        if session.closed or inner.output_ids is None or (session.busy is not None and not session.busy.done()):
            return None
        ids = tuple(inner.output_ids[0].tolist())
        if inner.position != len(ids) - 1:
            return None
        return SessionHistory(ids=ids, computed=inner.position, rewinds=rewind.supported(inner))

    def rewind(self, session: PetalsSession, keep: int) -> None:
        """Keep the session's first ``keep`` tokens (servers with ``backend.swarm.session_rewind`` forget the rest)."""
        if session.busy is not None and not session.busy.done():
            raise BadRequest("A generation is already running in this session")
        rewind.rewind(session.inner, keep)

    # ---------------------------------------------------------------- the swarm, as the page shows it
    def route(self, session: PetalsSession) -> list[dict[str, Any]]:
        """The servers that hold the session's blocks now, in block order (``swarm_map.route_of``)."""
        return swarm_map.route_of(list(getattr(session.inner, "_server_sessions", None) or ()))

    async def swarm(self, model_key: str) -> dict[str, Any]:
        """The model's servers as its DHT announces them (blocking DHT read off the event loop)."""
        loaded = self._get(model_key)

        def read() -> dict[str, Any]:
            from petals.utils.dht import get_remote_module_infos

            manager = loaded.model.transformer.h.sequence_manager
            infos = get_remote_module_infos(manager.dht, manager.block_uids, latest=True,
                                            return_future=True).result(timeout=10)
            return swarm_map.swarm_summary(model_key, list(infos))

        try:
            return await asyncio.get_running_loop().run_in_executor(None, read)
        except Exception as e:
            raise SwarmError(f"Swarm error: could not read the swarm's servers: {type(e).__name__}: {e}"
                             .splitlines()[0]) from None

    # ---------------------------------------------------------------- generation
    async def stream(self, session: PetalsSession, inputs: str | None, params: SamplingParams, *,
                     max_new_tokens: int, stop_sequences: list[str]) -> AsyncIterator[Chunk]:
        """Generate up to ``max_new_tokens`` tokens in ``session``; yield chunks as tokens arrive."""
        loaded, input_ids, budget = await self._plan(session, inputs, max_new_tokens)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        session.cancel.clear()
        detok = IncrementalDetokenizer(lambda ids: loaded.tokenizer.decode(ids), session.context_ids())
        recorder = None if params.logprobs is None else _LogprobRecorder(loaded.tokenizer, params.logprobs)
        streamer = _TokenStreamer(detok, lambda c: loop.call_soon_threadsafe(queue.put_nowait, c), budget=budget,
                                  stop_sequences=stop_sequences, eos_token_id=loaded.eos_token_id,
                                  cancel=session.cancel, logprobs=recorder)
        processors = [_float32_scores, *([recorder] if recorder else []), *params.logits_processors]

        def run() -> None:
            try:
                _generate(loaded, session, input_ids, params, budget, streamer, processors)
                if streamer.finished is None:  # generate() stopped by itself (e.g. its own max_length)
                    tail = detok.flush()
                    loop.call_soon_threadsafe(queue.put_nowait, Chunk(text=tail, tokens=0, finish_reason="length"))
            except BaseException as e:  # surfaced on the event loop
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        self._running += 1
        session.busy = loop.run_in_executor(self._executor, run)
        session.busy.add_done_callback(lambda _: self._done_running())
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise _translate(item)
                yield item
        finally:
            session.cancel.set()  # a consumer that leaves early stops the worker at its next token
            await _outlast(session.busy)  # the session (and its generation slot) is free only once generate() returned

    async def _plan(self, session: PetalsSession, inputs: str | None,
                    max_new_tokens: int) -> tuple[_Loaded, list[int], int]:
        """Check the session can generate now; the model, the input's token ids and the token budget."""
        if session.closed:
            raise BadRequest("The inference session is closed; open a new one")
        if session.busy is not None and not session.busy.done():
            raise BadRequest("A generation is already running in this session")
        if self._running >= self._max_generations:
            raise Busy("Server is busy: too many generations running, retry later")
        loaded = self._get(session.model_key)
        # a long input takes a while to tokenize: never on the event loop (the tokenizer releases the GIL)
        if isinstance(inputs, list):  # token ids (the OpenAI API's token-id prompts)
            input_ids = inputs
        else:
            input_ids = await asyncio.to_thread(self.token_ids, session.model_key, inputs) if inputs else []
        if not input_ids and session.length == 0:
            raise BadRequest("inputs are required for the first generation of a session")
        used = session.length + len(input_ids)
        budget = min(max_new_tokens, session.max_length - used)
        if budget <= 0:
            raise LengthExceeded(f"{MAX_LENGTH_EXCEEDED}: the session holds {session.length} tokens, the request "
                                 f"adds {len(input_ids)} and asks for more, but its max_length is {session.max_length}")
        return loaded, input_ids, budget

    def _done_running(self) -> None:
        self._running -= 1


async def _outlast(work: asyncio.Future) -> None:
    """Wait until ``work`` (a worker thread's run) is done, even when this task is cancelled meanwhile (then the
    cancellation is raised after it). A consumer that leaves twice (a cancel request, then the client's disconnect)
    must not release its generation slot while the worker still runs: the next generation would find the engine
    busy."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.wait({work})  # never cancels ``work``
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _float32_scores(input_ids, scores):
    """A logits processor (it runs before temperature and top-p): sampling computes in float32, so a small
    temperature cannot overflow half-precision logits into inf/nan."""
    return scores.float()


def _generate(loaded: _Loaded, session: PetalsSession, input_ids: list[int], params: SamplingParams, budget: int,
              streamer: _TokenStreamer, processors: list) -> None:
    """Run transformers' generate() in the Petals session (blocking: on a worker thread); tokens go to ``streamer``."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if params.grammar is not None:  # built here: a grammar takes milliseconds to compile
        processors.append(grammar.GrammarProcessor(loaded.tokenizer, params.grammar))
    ids = torch.tensor([input_ids], dtype=torch.long) if input_ids else None
    if params.seed is not None:
        torch.manual_seed(params.seed)
    with torch.inference_mode():
        loaded.model.generate(ids, session=session.inner, max_new_tokens=budget, streamer=streamer,
                              stopping_criteria=StoppingCriteriaList([streamer]),
                              logits_processor=LogitsProcessorList(processors),
                              pad_token_id=loaded.eos_token_id, **params.generate_kwargs())


def _stop_dht(model: Any) -> None:
    """Stop a distributed model's routing and its DHT process (and p2pd)."""
    try:
        manager = model.transformer.h.sequence_manager
        manager.shutdown()
        manager.dht.shutdown()
    except Exception:
        logger.debug("shutting down the DHT failed", exc_info=True)


_OUT_OF_CACHE = re.compile(r"Could not allocate .*out of memory|AllocationFailed", re.IGNORECASE)
_BAD_PROBABILITIES = "probability tensor contains either"


def _translate(error: BaseException) -> Exception:
    """Turn a Petals/hivemind failure into a one-line client-facing error."""
    text = " ".join(str(error).split()) or type(error).__name__
    if MAX_LENGTH_EXCEEDED in text:
        return LengthExceeded(text)
    if CACHE_FULL in text.lower() or "AllocationFailed" in text or _OUT_OF_CACHE.search(text):
        logger.info("generation refused: the swarm is out of attention cache: %s", text)
        return CacheFull(f"The swarm is out of capacity: {CACHE_FULL}, retry later or ask for a smaller "
                         "max_length")
    if _BAD_PROBABILITIES in text:  # sampling parameters that make the probabilities inf/nan: the client's
        logger.info("generation failed on the request's sampling parameters: %s", text)
        return SamplingFailed("The sampling parameters (temperature, top_p, top_k, repetition_penalty) made the "
                              "token probabilities invalid (inf or nan); use values closer to 1")
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return SwarmError(f"The swarm did not answer in time: {text}")
    if type(error).__name__ in ("ControlFailure", "P2PDaemonError") or "failed to dial" in text:
        logger.warning("generation failed: %r", error)
        return SwarmError("Swarm error: a server on the route could not be reached (it may have left the swarm); "
                          "retry later")
    if type(error).__name__ == "MissingBlocksError":  # its text carries links meant for the public swarm
        logger.warning("generation failed: %s", text)
        blocks = re.search(r"blocks (.+?) are online", text)
        where = f" {blocks.group(1)}" if blocks else ""
        return SwarmError(f"Swarm error: no server holding blocks{where} of the model is online; retry later")
    logger.warning("generation failed: %r", error, exc_info=error)
    return SwarmError(f"Swarm error: {type(error).__name__}: {text}")
