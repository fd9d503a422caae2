"""One decode step of many inference sessions through a Petals server's Llama blocks, as one forward per block.

Petals 2.2 runs every session's step alone. Here the steps of several sessions (each adding one token, each
with its own attention cache and prefix length) go through a block together: the norms, the Q/K/V/O
projections and the MLP run once over all the sessions' rows; rotary embeddings use each row's own position;
each session's new keys and values are written into its own cache, and attention reads the caches: sessions of
similar lengths together, copied into one zero-padded batch with a mask (one attention call per block instead of
one per session), a session unlike the others straight over its cache (:func:`length_buckets`). The arithmetic
is the one Petals' own Llama block does
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
    # query head h reads kv head h // groups, as transformers' repeat_kv lays them out
    query = query.view(rows, kv_heads, heads // kv_heads, head_dim)

    starts, views = [], []
    start = 0
    for session in sessions:  # write this step's keys and values, then read each cache up to and including it
        n, p = session.hidden_states.shape[0], session.prefix_length
        keys, values = session.caches[block]
        keys[:, :, :, p] = key[start:start + n]
        values[:, :, p, :] = value[start:start + n]
        starts.append(start)
        views.append((keys[:, :, :, :p + 1], values[:, :, :p + 1, :]))
        start += n
    out = torch.empty(rows, 1, heads * head_dim, dtype=x.dtype, device=x.device)
    scale = math.sqrt(head_dim)
    for bucket in length_buckets([v[0].shape[-1] for v in views]):
        index = [r for i in bucket for r in range(starts[i], starts[i] + sessions[i].hidden_states.shape[0])]
        if len(bucket) == 1:
            (i,) = bucket
            result = _attend(query[index[0]:index[-1] + 1], *views[i], None, scale)
        else:
            result = _attend(query[index], *_padded([views[i] for i in bucket]), scale)
        out[index, 0] = result.reshape(len(index), heads * head_dim)
    return out


def _attend(query, keys, values, mask, scale):
    """Softmax attention of ``query`` ``[rows, kv_heads, groups, head_dim]`` over keys ``[rows, kv_heads,
    head_dim, length]`` and values ``[rows, kv_heads, length, head_dim]``, as Petals' Llama block computes it
    (scores in the model's dtype, softmax in float32). ``mask`` (float32, 0 or -inf) hides padding."""
    weights = torch.matmul(query, keys) / scale
    if mask is None:
        weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32)
    else:
        weights = torch.nn.functional.softmax(weights.float() + mask, dim=-1)
    return torch.matmul(weights.to(query.dtype), values)


def _padded(views):
    """Several sessions' cache views copied into one zero-padded batch, and the mask that hides the padding."""
    rows = sum(k.shape[0] for k, _ in views)
    keys0 = views[0][0]
    length = max(k.shape[-1] for k, _ in views)
    kv_heads, head_dim = keys0.shape[1], keys0.shape[2]
    keys = keys0.new_zeros(rows, kv_heads, head_dim, length)
    values = keys0.new_zeros(rows, kv_heads, length, head_dim)
    mask = torch.full((rows, 1, 1, length), float("-inf"), device=keys0.device)
    r = 0
    for k, v in views:
        n, used = k.shape[0], k.shape[-1]
        keys[r:r + n, :, :, :used] = k
        values[r:r + n, :, :used] = v
        mask[r:r + n, :, :, :used] = 0.0
        r += n
    return keys, values, mask


def length_buckets(lengths: Sequence[int], max_waste: float = 2.0, max_tokens: int = 16384) -> list[list[int]]:
    """Group sessions (by index) of similar attended lengths for padded attention.

    Sorted by length, a session joins the current group while the padded size (longest x count) stays within
    ``max_waste`` times the real tokens and ``max_tokens`` in all; one-session groups attend straight over their
    cache (no copy). Many short or similar sessions thus cost one attention call per block instead of one each,
    and a long session never drags short ones into a huge padded copy.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        candidate = current + [i]
        padded = lengths[i] * len(candidate)
        if current and (padded > max_waste * sum(lengths[j] for j in candidate) or padded > max_tokens):
            groups.append(current)
            candidate = [i]
        current = candidate
    if current:
        groups.append(current)
    return groups


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
