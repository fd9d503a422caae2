"""One decode step of many inference sessions through a Petals server's Llama blocks, as one forward per block.

Petals 2.2 runs every session's step alone. Here the steps of several sessions (each adding one token, each
with its own attention cache and prefix length) go through a block together: the norms, the Q/K/V/O
projections and the MLP run once over all the sessions' rows; rotary embeddings use each row's own position;
attention runs per session, straight over that session's cache (the cache is written in place first, then read
as a view: nothing is copied or padded). The arithmetic is the one Petals' own Llama block does
(``petals/models/llama/block.py``): same modules, same rotary tables, softmax in float32, the same cache layout
(keys ``[batch, kv_heads, head_dim, max_length]``, values ``[batch, kv_heads, max_length, head_dim]``).

Only plain single-device Llama blocks qualify (:func:`supports`); anything else keeps Petals' path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SessionStep:
    """One session's share of a batched step: its rows of hidden states and, per block, its cache and position."""

    hidden_states: torch.Tensor  # [rows, 1, hidden]
    prefix_length: int
    caches: Sequence[tuple[torch.Tensor, torch.Tensor]]  # per block: (keys, values)


def supports(backend) -> bool:
    """True if ``backend`` (a Petals ``TransformerBackend``) holds a block this module computes exactly."""
    from petals.models.llama.block import WrappedLlamaBlock
    from transformers.models.llama.modeling_llama import LlamaLinearScalingRotaryEmbedding, LlamaRotaryEmbedding

    shards = getattr(backend.module, "module_shards", ())
    if len(shards) != 1 or not isinstance(shards[0], WrappedLlamaBlock):
        return False
    attn = shards[0].self_attn
    return (getattr(attn.config, "pretraining_tp", 1) == 1
            and type(attn.rotary_emb) in (LlamaRotaryEmbedding, LlamaLinearScalingRotaryEmbedding))


def block_of(backend):
    """The Llama decoder layer inside a supported backend."""
    return backend.module.module_shards[0]


@torch.inference_mode()
def decode_block(layer, hidden: torch.Tensor, sessions: Sequence[SessionStep], block: int) -> torch.Tensor:
    """Run ``layer`` (a Petals ``WrappedLlamaBlock``) on ``hidden`` ``[rows, 1, hidden]``, the sessions' rows in
    order, reading and extending each session's cache for block number ``block`` of its route."""
    residual = hidden
    attn_in = layer.input_layernorm(hidden)
    attn_out = _attention(layer.self_attn, attn_in, sessions, block)
    hidden = residual + layer.self_attn.o_proj(attn_out)
    residual = hidden
    return residual + layer.mlp(layer.post_attention_layernorm(hidden))


def _attention(attn, x: torch.Tensor, sessions: Sequence[SessionStep], block: int) -> torch.Tensor:
    rows = x.shape[0]
    heads, kv_heads, head_dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    query = attn.q_proj(x).view(rows, heads, head_dim)
    key = attn.k_proj(x).view(rows, kv_heads, head_dim)
    value = attn.v_proj(x).view(rows, kv_heads, head_dim)
    query, key = _rotate(attn, query, key, value, sessions)

    out = torch.empty(rows, 1, heads * head_dim, dtype=x.dtype, device=x.device)
    groups = heads // kv_heads  # query head h reads kv head h // groups, as transformers' repeat_kv lays them out
    scale = math.sqrt(head_dim)
    start = 0
    for session in sessions:
        n, p = session.hidden_states.shape[0], session.prefix_length
        keys, values = session.caches[block]
        keys[:, :, :, p] = key[start:start + n]
        values[:, :, p, :] = value[start:start + n]
        q = query[start:start + n].view(n, kv_heads, groups, head_dim)
        weights = torch.matmul(q, keys[:, :, :, :p + 1]) / scale
        weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
        out[start:start + n, 0] = torch.matmul(weights, values[:, :, :p + 1, :]).view(n, heads * head_dim)
        start += n
    return out


def _rotate(attn, query, key, value, sessions):
    """Rotary embeddings at each row's own position (its session's prefix length)."""
    positions = [s.prefix_length for s in sessions for _ in range(s.hidden_states.shape[0])]
    cos, sin = attn.rotary_emb(value, seq_len=max(positions) + 1)  # [1, 1, seq, head_dim], the model's dtype
    index = torch.tensor(positions, device=query.device)
    cos, sin = cos[0, 0, index].unsqueeze(1), sin[0, 0, index].unsqueeze(1)  # [rows, 1, head_dim]
    return _apply_rotary(query, cos, sin), _apply_rotary(key, cos, sin)


def _apply_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
