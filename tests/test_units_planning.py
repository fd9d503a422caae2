"""The budget and stop planner (backend.services.planning): one rule set for every API."""

from __future__ import annotations

import pytest

from backend.errors import BadRequest, LengthExceeded, TooLarge
from backend.services.planning import Budget, StopRules

BUDGET = Budget(max_new_tokens_limit=100, max_input_chars=50, max_input_tokens=20)


def test_too_long_input_is_413_whatever_the_api():
    for subject in ("inputs are", "the prompt is"):
        with pytest.raises(TooLarge, match="too long \\(51 characters, limit 50\\)") as chars:
            BUDGET.check_chars("x" * 51, subject=subject, param="inputs")
        with pytest.raises(TooLarge, match="too long \\(21 tokens, limit 20\\)") as tokens:
            BUDGET.check_tokens(21, subject=subject, param="inputs")
        assert chars.value.status == tokens.value.status == 413


def test_legacy_step_and_session_length():
    assert BUDGET.step(7, None, used=3) == 7 and BUDGET.step(None, 10, used=3) == 7
    with pytest.raises(BadRequest, match="leaves no room"):
        BUDGET.step(None, 3, used=3)
    with pytest.raises(BadRequest, match="one of max_new_tokens or max_length"):
        BUDGET.step(None, None, used=0)
    with pytest.raises(BadRequest, match="above this server's limit of 100"):
        BUDGET.step(101, None, used=0)
    assert BUDGET.session_length(5, 10, None, context=64) == 15 and BUDGET.session_length(0, None, 0, 64) == 1
    with pytest.raises(LengthExceeded, match="^Maximum length exceeded"):
        BUDGET.session_length(60, 10, None, context=64)


def test_openai_completion_tokens():
    kwargs = {"prompt_tokens": 60, "context": 64, "param": "max_tokens", "prompt_param": "prompt"}
    assert BUDGET.completion_tokens(None, None, **kwargs) == 4
    assert BUDGET.completion_tokens(None, 2, **kwargs) == 2 and BUDGET.completion_tokens(3, None, **kwargs) == 3
    with pytest.raises(LengthExceeded):
        BUDGET.completion_tokens(5, None, **kwargs)
    with pytest.raises(BadRequest, match="max_tokens 101 is above"):
        BUDGET.completion_tokens(101, None, **kwargs)
    with pytest.raises(TooLarge, match="context is 64"):
        BUDGET.completion_tokens(None, None, **{**kwargs, "prompt_tokens": 64})


def test_stop_rules():
    ws = StopRules("#", extra=("</s>", ""), until_stop=True)
    assert ws.sequences() == ["#", "</s>"] and ws.continues and ws.rewinds("</s>") and not ws.rewinds("#")
    ws.check(lambda text: 1)
    with pytest.raises(BadRequest, match="exactly 1 token"):
        ws.check(lambda text: 2)
    with pytest.raises(BadRequest, match="require stop_sequence"):
        StopRules(extra=("</s>",)).check(len)
    openai = StopRules(strings=("\n\n",))
    assert openai.sequences() == ["\n\n"] and not openai.continues and not openai.rewinds("\n\n")
    assert not StopRules(until_stop=True).continues
