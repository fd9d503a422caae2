"""Incremental detokenization: deltas concatenate to the full decoding, U+FFFD is held, spaces survive."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.engine.detokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def _stream(tokenizer, ids, context=(), step=1):
    detok = IncrementalDetokenizer(tokenizer.decode, list(context))
    deltas = [detok.push(ids[i:i + step]) for i in range(0, len(ids), step)]
    deltas.append(detok.flush())
    return deltas


TEXTS = ["Hello, world!", "naïve café — déjà vu", "emoji 🎉🚀 and 中文字符", "  leading spaces\n\tand tabs",
         "12345 digits split", "<|im_start|>user\nhi<|im_end|>"]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids) == text
    assert not any(d.endswith("\ufffd") for d in deltas)


def test_multibyte_character_is_held_until_complete(tokenizer):
    ids = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # byte-level BPE splits the emoji: a lone piece decodes to U+FFFD
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == "🎉"
    assert all(d in ("", "🎉") for d in deltas)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=49151), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=3))
def test_random_token_streams(tokenizer, ids, step):
    """Any token sequence, fed in any step size: the deltas add up exactly to decode(ids)."""
    deltas = _stream(tokenizer, ids, step=step)
    assert "".join(deltas) == tokenizer.decode(ids)


def test_context_keeps_leading_space_for_sentencepiece_style_decoders():
    """A decoder that drops the leading space of a lone piece (as SentencePiece does)."""
    vocab = {0: "▁Hello", 1: "▁world", 2: "!"}

    def decode(ids):
        return "".join(vocab[i] for i in ids).replace("▁", " ").removeprefix(" ")

    detok = IncrementalDetokenizer(decode, context_ids=[0])
    assert detok.push([1]) + detok.push([2]) == " world!"
    naive = "".join(decode([i]) for i in [1, 2])
    assert naive == "world!"  # what per-token decoding would have sent


def test_genuine_replacement_characters_are_released():
    """Invalid bytes stay U+FFFD forever: they are released after a few tokens, not held forever."""
    detok = IncrementalDetokenizer(lambda ids: "\ufffd" * len(ids))
    out = [detok.push([i]) for i in range(6)]
    assert "".join(out) + detok.flush() == "\ufffd" * 6
    assert any(out)
