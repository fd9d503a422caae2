"""GenerationService on a fake engine: rounds, held text, the rewind, budgets, limits (one layer, no Petals)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from backend.engine.types import Chunk, ModelStatus, SamplingParams
from backend.errors import Busy, LengthExceeded
from backend.registry import ChatSettings, ModelSpec, Registry
from backend.services.generation import GenerateSpec, GenerationService
from backend.services.limits import SessionLimiter
from backend.services.metrics import Metrics
from backend.services.planning import StopRules

SPEC = ModelSpec(key="m", family="F", repository="r", name="M", chat=ChatSettings(max_session_length=100))


@dataclass
class FakeSession:
    model_key: str
    max_length: int
    tokens: list[str] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.tokens)


class FakeEngine:
    """Each character of the script is one token; '\\x00' marks a held (incomplete) token."""

    def __init__(self, script: str):
        self.script = script
        self.rewinds: list[str] = []
        self.closed = 0

    def status(self):
        return {"m": ModelStatus(key="m", ready=True)}

    def count_tokens(self, model_key, text):
        return len(text)

    async def open_session(self, model_key, max_length):
        return FakeSession(model_key, max_length)

    async def close_session(self, session):
        self.closed += 1

    def replace_last_token(self, session, text):
        self.rewinds.append(text)

    async def stream(self, session, inputs, params, *, max_new_tokens, stop_sequences):
        session.tokens += list(inputs or "")
        text = ""
        for i, ch in enumerate(self.script[:max_new_tokens]):
            session.tokens.append(ch)
            held = ch == "\x00"
            text += "" if held else ch
            matched = next((s for s in stop_sequences if text.endswith(s)), None)
            last = matched is not None or i + 1 == max_new_tokens
            reason = "stop" if matched else ("length" if last else None)
            yield Chunk(text="" if held else ch, tokens=1, held=held, finish_reason=reason, matched_stop=matched)
            if last:
                return


def service(script, **limits):
    engine = FakeEngine(script)
    registry = Registry(models=(SPEC,), default="m", default_embedded="")
    limiter = SessionLimiter(limits.get("max_sessions", 10), limits.get("per_client", 10))
    return engine, GenerationService(engine, registry, limiter, Metrics())


async def _rounds(svc, req, max_length=100, client="c"):
    conv = await svc.open(SPEC, max_length, client)
    try:
        return [r async for r in conv.generate(req)]
    finally:
        await conv.close()


def run(coro):
    return asyncio.run(coro)


def test_rounds_of_max_new_tokens_until_stop_sequence():
    _, svc = service("abcdefg###zzz")
    rounds = run(_rounds(svc, GenerateSpec(inputs="hi", max_new_tokens=2, stops=StopRules("###", until_stop=True))))
    assert [(r.outputs, r.stop, r.token_count) for r in rounds] == [
        ("ab", False, 2), ("cd", False, 2), ("ef", False, 2), ("g#", False, 2), ("##", True, 2)]


def test_held_tokens_are_sent_with_the_next_round():
    _, svc = service("a\x00bc.")
    rounds = run(_rounds(svc, GenerateSpec(inputs="x", max_new_tokens=1, stops=StopRules(".", until_stop=True))))
    assert [(r.outputs, r.token_count) for r in rounds] == [("a", 1), ("b", 2), ("c", 1), (".", 1)]


def test_extra_stop_sequence_rewinds_to_the_stop_sequence():
    engine, svc = service("ab</s>cd")
    rounds = run(_rounds(svc, GenerateSpec(inputs="x", max_new_tokens=1,
                                           stops=StopRules("#", extra=("</s>",), until_stop=True))))
    assert "".join(r.outputs for r in rounds) == "ab</s>" and rounds[-1].stop
    assert engine.rewinds == ["#"]


def test_without_stop_sequence_one_answer():
    _, svc = service("abcdef")
    rounds = run(_rounds(svc, GenerateSpec(inputs="x", max_new_tokens=4, stops=StopRules(until_stop=True))))
    assert [(r.outputs, r.stop, r.token_count, r.finish_reason) for r in rounds] == [("abcd", True, 4, "length")]


def test_budget_runs_out_before_the_stop_sequence():
    _, svc = service("a" * 50)

    async def scenario():
        conv = await svc.open(SPEC, 10, "c")
        got = []
        with pytest.raises(LengthExceeded, match="Maximum length exceeded"):
            async for r in conv.generate(GenerateSpec(inputs="xyz", max_new_tokens=1,
                                                      stops=StopRules("#", until_stop=True))):
                got.append(r)
        await conv.close()
        return got

    got = run(scenario())
    assert sum(r.token_count for r in got) == 7  # 10 - 3 input tokens


def test_request_larger_than_the_session_is_refused_up_front():
    _, svc = service("abc")
    with pytest.raises(LengthExceeded, match="over its max_length of 5"):
        run(_rounds(svc, GenerateSpec(inputs="xyz", max_new_tokens=3), max_length=5))


def test_session_limits_global_and_per_client():
    engine, svc = service("a", max_sessions=3, per_client=2)

    async def scenario():
        a1 = await svc.open(SPEC, 10, "A")
        await svc.open(SPEC, 10, "A")
        with pytest.raises(Busy, match="this client already has 2 open sessions"):
            await svc.open(SPEC, 10, "A")
        await svc.open(SPEC, 10, "B")
        with pytest.raises(Busy, match="all 3 inference sessions are in use"):
            await svc.open(SPEC, 10, "C")
        await a1.close()
        await a1.close()  # closing twice is harmless
        await svc.open(SPEC, 10, "C")
        return svc.limiter.open

    assert run(scenario()) == 3
    assert engine.closed == 1


def test_sampling_kwargs():
    assert SamplingParams().generate_kwargs() == {"do_sample": False}
    assert SamplingParams(do_sample=True, temperature=0.5, top_k=None, top_p=0.9,
                          repetition_penalty=1.2).generate_kwargs() == {
        "do_sample": True, "temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.2}
