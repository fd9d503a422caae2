"""One decode step of many inference sessions through a Petals server's Llama blocks, as one forward per block.

Petals 2.2 runs every session's step alone. Here the steps of several sessions (each adding one token, each
with its own attention cache and prefix length) go through a block together: the norms, the Q/K/V/O
projections and the MLP run once over all the sessions' rows; rotary embeddings use each row's own position;
each session's new keys and values are written into its own cache, and attention reads the caches: sessions of
similar lengths together, their caches cut to the longest of them and stacked, with a mask hiding what lies past
each one's own position (one attention call per block instead of one per session), a session unlike the others
straight over its cache (:func:`length_buckets`). What all blocks of a step share (rotary factors, buckets,
masks) is worked out once per step (:class:`StepPlan`). The arithmetic is the one Petals' own Llama block does
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
    """One session's share of a batched step: its rows of new tokens and, per block, its cache and position."""

    hidden_states: torch.Tensor  # [rows, new_tokens, hidden]: one new token per row (decode) or several (prefill)
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


@dataclass
class _Bucket:
    """Sessions (by index, in row order) whose attention runs in one call; ``rows`` None means every row."""

    sessions: list[int]
    rows: torch.Tensor | None
    length: int  # the longest attended length in the bucket
    mask: torch.Tensor | None  # float32 0 / -inf over the padded length, or None for one session


class StepPlan:
    """What every block of one batched step shares, worked out once per step instead of once per block: the
    rotary factors of each token's position, where each session's tokens are, the attention buckets of the
    sessions adding one token, and the causal masks of those adding several.

    The step's hidden states are flat, one token per row, ``[tokens, 1, hidden]``: each session's rows of new
    tokens in order (row after row), so the projections and the MLP treat every token alike."""

    def __init__(self, sessions: Sequence[SessionStep], rotary_emb, like: torch.Tensor):
        self.sessions = sessions
        self.spans: list[_Span] = []
        start = 0
        for session in sessions:
            rows, tokens = session.hidden_states.shape[:2]
            self.spans.append(_Span(start, rows, tokens, session.prefix_length))
            start += rows * tokens
        self.rows = start
        positions = [s.position + t for s in self.spans for _ in range(s.rows) for t in range(s.tokens)]
        self.device = like.device
        cos, sin = rotary_emb(like[:0], seq_len=max(positions) + 1)  # [1, 1, seq, head_dim], the model's dtype
        index = torch.tensor(positions, device=self.device)
        self.cos, self.sin = cos[0, 0, index].unsqueeze(1), sin[0, 0, index].unsqueeze(1)  # [rows, 1, head_dim]
        decode = [i for i, s in enumerate(self.spans) if s.tokens == 1]
        self.buckets = [self._bucket(sorted(decode[j] for j in b))
                        for b in length_buckets([self.spans[i].position + 1 for i in decode])] if decode else []
        self.prefills = [(i, _causal_mask(s.tokens, s.position, self.device))
                         for i, s in enumerate(self.spans) if s.tokens > 1]

    def _bucket(self, members: list[int]) -> _Bucket:
        lengths = [self.spans[i].position + 1 for i in members]
        rows = [r for i in members for r in range(self.spans[i].start, self.spans[i].start + self.spans[i].rows)]
        index = None if len(rows) == self.rows else torch.tensor(rows, device=self.device)
        if len(members) == 1:
            return _Bucket(members, index, lengths[0], None)
        mask = torch.full((len(rows), 1, 1, max(lengths)), float("-inf"), device=self.device)
        r = 0
        for i, used in zip(members, lengths, strict=True):
            mask[r:r + self.spans[i].rows, :, :, :used] = 0.0
            r += self.spans[i].rows
        return _Bucket(members, index, max(lengths), mask)


@dataclass(frozen=True)
class _Span:
    """Where one session's tokens are in the step's flat rows, and the position of its first new token."""

    start: int
    rows: int
    tokens: int
    position: int


def _causal_mask(tokens: int, position: int, device) -> torch.Tensor:
    """float32 ``[tokens, position + tokens]``: new token ``t`` sees the cache and new tokens up to its own."""
    seen = torch.arange(position + tokens, device=device)
    own = torch.arange(tokens, device=device).unsqueeze(1) + position
    return torch.zeros(tokens, position + tokens, device=device).masked_fill_(seen > own, float("-inf"))


def plan_step(layer, sessions: Sequence[SessionStep], hidden: torch.Tensor) -> StepPlan:
    """The plan of one step of ``hidden`` through blocks like ``layer`` (every Llama block of a model has the
    same rotary tables: they depend only on the model's config)."""
    return StepPlan(sessions, layer.self_attn.rotary_emb, hidden)


@torch.inference_mode()
def decode_block(layer, hidden: torch.Tensor, plan: StepPlan, block: int) -> torch.Tensor:
    """Run ``layer`` (a Petals ``WrappedLlamaBlock``) on ``hidden`` ``[tokens, 1, hidden]``, the plan's sessions'
    new tokens in order, reading and extending each session's cache for block number ``block`` of its route."""
    residual = hidden
    attn_in = layer.input_layernorm(hidden)
    attn_out = _attention(layer.self_attn, attn_in, plan, block)
    hidden = residual + layer.self_attn.o_proj(attn_out)
    residual = hidden
    return residual + layer.mlp(layer.post_attention_layernorm(hidden))


def _attention(attn, x: torch.Tensor, plan: StepPlan, block: int) -> torch.Tensor:
    rows = x.shape[0]
    heads, kv_heads, head_dim = attn.num_heads, attn.num_key_value_heads, attn.head_dim
    query = _apply_rotary(attn.q_proj(x).view(rows, heads, head_dim), plan.cos, plan.sin)
    key = _apply_rotary(attn.k_proj(x).view(rows, kv_heads, head_dim), plan.cos, plan.sin)
    value = attn.v_proj(x).view(rows, kv_heads, head_dim)
    # query head h reads kv head h // groups, as transformers' repeat_kv lays them out
    query = query.view(rows, kv_heads, heads // kv_heads, head_dim)
    caches = [session.caches[block] for session in plan.sessions]
    for s, (keys, values) in zip(plan.spans, caches, strict=True):  # this step's keys and values
        end = s.start + s.rows * s.tokens
        keys[..., s.position:s.position + s.tokens] = key[s.start:end].view(
            s.rows, s.tokens, kv_heads, head_dim).permute(0, 2, 3, 1)
        values[:, :, s.position:s.position + s.tokens] = value[s.start:end].view(
            s.rows, s.tokens, kv_heads, head_dim).transpose(1, 2)
    scale = math.sqrt(head_dim)
    if not plan.prefills and len(plan.buckets) == 1 and plan.buckets[0].rows is None:  # one call, rows in order
        return _attend_bucket(query, caches, plan, plan.buckets[0], scale).reshape(rows, 1, heads * head_dim)
    out = torch.empty(rows, 1, heads * head_dim, dtype=x.dtype, device=x.device)
    for bucket in plan.buckets:  # several buckets, or prefills beside them: each bucket has its own rows
        result = _attend_bucket(query[bucket.rows], caches, plan, bucket, scale)
        out[bucket.rows, 0] = result.reshape(result.shape[0], heads * head_dim)
    for i, mask in plan.prefills:
        s = plan.spans[i]
        end = s.start + s.rows * s.tokens
        out[s.start:end, 0] = _attend_prefill(query[s.start:end], caches[i], s, mask, scale)
    return out


def _attend_prefill(query, cache, span: _Span, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of a session's several new tokens over its cache, as Petals' block computes a prefill:
    ``query`` ``[rows * tokens, kv_heads, groups, head_dim]`` -> ``[rows * tokens, heads * head_dim]``."""
    keys, values = cache
    length = span.position + span.tokens
    _, kv_heads, groups, head_dim = query.shape
    q = query.view(span.rows, span.tokens, kv_heads, groups, head_dim).permute(0, 2, 3, 1, 4)
    weights = torch.matmul(q, keys[..., :length].unsqueeze(2)) / scale  # [rows, kv_heads, groups, tokens, length]
    weights = torch.nn.functional.softmax(weights.float() + mask, dim=-1)
    out = torch.matmul(weights.to(query.dtype), values[:, :, :length].unsqueeze(2))
    return out.permute(0, 3, 1, 2, 4).reshape(span.rows * span.tokens, kv_heads * groups * head_dim)


def _attend_bucket(query, caches, plan: StepPlan, bucket: _Bucket, scale: float) -> torch.Tensor:
    """One attention call for a bucket's rows: straight over a lone session's cache, else over the sessions'
    caches cut to the bucket's length and stacked, the mask hiding what lies past each session's own position."""
    length = bucket.length
    if bucket.mask is None:
        keys, values = caches[bucket.sessions[0]]
        return _attend(query, keys[..., :length], values[:, :, :length], None, scale)
    members = [caches[i] for i in bucket.sessions]
    if any(k.shape[-1] < length for k, _ in members):  # a session's cache is shorter than the bucket: pad
        keys, values = _padded([(k[..., :plan.spans[i].position + 1], v[:, :, :plan.spans[i].position + 1])
                                for i, (k, v) in zip(bucket.sessions, members, strict=True)], length)
    else:  # past a session's position its cache holds finite values the mask zeroes
        keys = torch.cat([k[..., :length] for k, _ in members])
        values = torch.cat([v[:, :, :length] for _, v in members])
    return _attend(query, keys, values, bucket.mask, scale)


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


def _padded(views, length: int):
    """Several sessions' cache views copied into one zero-padded batch of ``length`` positions."""
    rows = sum(k.shape[0] for k, _ in views)
    keys0 = views[0][0]
    kv_heads, head_dim = keys0.shape[1], keys0.shape[2]
    keys = keys0.new_zeros(rows, kv_heads, head_dim, length)
    values = keys0.new_zeros(rows, kv_heads, length, head_dim)
    r = 0
    for k, v in views:
        n, used = k.shape[0], k.shape[-1]
        keys[r:r + n, :, :, :used] = k
        values[r:r + n, :, :used] = v
        r += n
    return keys, values


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


def _apply_rotary(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
