"""How much attention cache a server we launch may hold.

Petals reserves a fixed attention cache per server (``--attn_cache_tokens``, default 16384 tokens per block for
grouped-query models): 0.35 GiB for the embedded model, about 16k tokens in all, so 16 sessions of
``max_length`` 2048 already fail with "Could not allocate ... out of memory". The cache is allocated per session
as sessions open, so a larger limit costs nothing until it is used. :func:`auto_cache_tokens` sizes it from the
memory available when the swarm starts.
"""

from __future__ import annotations

import json
from pathlib import Path

PETALS_DEFAULT_TOKENS = 16384
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def bytes_per_token_per_block(model_path: str | Path, dtype: str) -> int:
    """Keys plus values of one token in one block: ``2 * kv_heads * head_dim * dtype size``."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config["hidden_size"]) // heads
    return 2 * kv_heads * head_dim * DTYPE_BYTES[dtype]


def auto_cache_tokens(model_path: str | Path, dtype: str, blocks: int, *, fraction: float = 0.25,
                      available_bytes: int | None = None) -> int:
    """Tokens per block such that the caches of ``blocks`` blocks fill at most ``fraction`` of available memory
    (never below Petals' own default)."""
    if available_bytes is None:
        import psutil

        available_bytes = psutil.virtual_memory().available
    per_token = bytes_per_token_per_block(model_path, dtype) * max(1, blocks)
    return max(PETALS_DEFAULT_TOKENS, int(available_bytes * fraction) // per_token)


def server_flags(*, batching: bool, max_batch: int, cache_tokens: int) -> list[str]:
    """Flags for ``backend.swarm.server_main`` (see :mod:`backend.swarm.batching`)."""
    flags = ["--attn_cache_tokens", str(cache_tokens)] if cache_tokens else []
    return flags + (["--max_batch_sessions", str(max_batch)] if batching else ["--no_batching"])
