"""backend.swarm.session_rewind's position bookkeeping (the server side of the prompt cache's rewind), on fake steps.

The real thing runs in every test swarm (server_main installs it): tests/test_prompt_cache.py rewinds sessions there
and checks the answers against transformers.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from backend.swarm.server_main import parse_own_flags
from backend.swarm.session_rewind import FIELD, _Position


def step(tokens: int, **metadata):
    return SimpleNamespace(tensors=[SimpleNamespace(size=[1, tokens, 64])]), metadata


async def positions(session: _Position, steps: list) -> list[tuple[int, int]]:
    """(position, tokens rewound) as each step is handed to Petals' function."""
    async def source():
        for item in steps:
            yield item

    return [(session.position, session.rewound) async for _ in session.steps(source())]


def test_steps_grow_the_position_and_a_start_position_rewinds_it():
    session = _Position(max_length=100)
    seen = asyncio.run(positions(session, [step(10), step(1), step(1), step(3, **{FIELD: 5}), step(1)]))
    assert seen == [(0, 0), (10, 0), (11, 0), (5, 7), (8, 7)]
    assert session.position == 9  # Petals' own count: 16, less the 7 tokens rewound


@pytest.mark.parametrize("start", [-1, 11, "3", 2.0])
def test_a_start_position_outside_the_session_is_refused(start):
    with pytest.raises(ValueError, match=FIELD):
        asyncio.run(positions(_Position(max_length=100), [step(10), step(1, **{FIELD: start})]))


def test_the_length_limit_counts_the_true_position():
    session = _Position(max_length=12)
    asyncio.run(positions(session, [step(10), step(1), step(2, **{FIELD: 10})]))  # 10 + 2 fits after the rewind
    with pytest.raises(ValueError, match="Maximum length exceeded"):
        asyncio.run(positions(_Position(max_length=12), [step(10), step(3)]))


def test_server_main_installs_rewind_unless_told_not_to():
    assert not parse_own_flags([])[0].no_rewind
    own, rest = parse_own_flags(["--no_rewind", "--port", "1"])
    assert own.no_rewind and rest == ["--port", "1"]
