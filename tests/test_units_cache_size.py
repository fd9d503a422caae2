"""Sizing the embedded servers' attention cache and the flags the launcher passes them."""

from __future__ import annotations

import json

from backend.swarm.cache_size import PETALS_DEFAULT_TOKENS, auto_cache_tokens, bytes_per_token_per_block, server_flags


def write_config(folder, **overrides):
    config = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, **overrides}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_bytes_per_token_counts_keys_and_values_of_the_kv_heads(tmp_path):
    model = write_config(tmp_path)
    assert bytes_per_token_per_block(model, "bfloat16") == 2 * 3 * 64 * 2
    assert bytes_per_token_per_block(write_config(tmp_path, num_key_value_heads=None), "float32") == 2 * 9 * 64 * 4


def test_auto_size_is_a_fraction_of_available_memory_never_below_petals_default(tmp_path):
    model = write_config(tmp_path)
    per_token = 768 * 30  # SmolLM2-135M, bfloat16, 30 blocks
    tokens = auto_cache_tokens(model, "bfloat16", 30, available_bytes=8 << 30)
    assert tokens == (2 << 30) // per_token  # a quarter of 8 GiB: about 93k tokens, enough for 16 x 4096
    assert tokens * per_token <= 2 << 30
    assert auto_cache_tokens(model, "bfloat16", 30, available_bytes=100 << 20) == PETALS_DEFAULT_TOKENS


def test_server_flags():
    assert server_flags(batching=True, max_batch=16, cache_tokens=0) == ["--max_batch_sessions", "16"]
    assert server_flags(batching=False, max_batch=16, cache_tokens=5000) == ["--attn_cache_tokens", "5000",
                                                                              "--no_batching"]
