"""An independent numpy reference for Llama GGUF files, used by the conversion tests.

It works on the tensors exactly as llama.cpp stores them (GGUF layout: Q/K rows permuted for
interleaved rotary pairs), so it shares no code with ``backend.embedded``: agreement between
its logits and transformers' logits on the converted folder checks the name mapping, the
shape reversal and the Q/K un-permute together.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def gguf_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """All tensors of a GGUF file dequantized to float32 (numpy shape = reversed GGUF shape), and its metadata."""
    reader = gguf.GGUFReader(path)
    arrays = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        arrays[tensor.name] = np.asarray(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32
        ).reshape(shape)
    meta = {
        key: field.contents()
        for key, field in reader.fields.items()
        if key.startswith(("llama.", "general."))
    }
    return arrays, meta


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row permutation llama.cpp's converter applies to Llama Q and K projections."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _f64(weight: np.ndarray) -> np.ndarray:
    return weight.astype(np.float64)


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * _f64(weight)


def _rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """ggml's "normal" rope: rotate adjacent pairs (2i, 2i+1) of each head; x is (T, heads, d)."""
    seq, _, dim = x.shape
    inv_freq = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(seq, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _attention(h: np.ndarray, w: dict[str, np.ndarray], prefix: str, meta: dict) -> np.ndarray:
    n_head = int(meta["llama.attention.head_count"])
    n_kv = int(meta.get("llama.attention.head_count_kv", n_head))
    theta = float(meta.get("llama.rope.freq_base", 10000.0))
    seq, hidden = h.shape
    dim = hidden // n_head
    q = _rope_interleaved((h @ _f64(w[f"{prefix}.attn_q.weight"]).T).reshape(seq, n_head, dim), theta)
    k = _rope_interleaved((h @ _f64(w[f"{prefix}.attn_k.weight"]).T).reshape(seq, n_kv, dim), theta)
    v = (h @ _f64(w[f"{prefix}.attn_v.weight"]).T).reshape(seq, n_kv, dim)
    group = n_head // n_kv
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dim)
    scores = scores + np.triu(np.full((seq, seq), -np.inf), k=1)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, hidden)
    return out @ _f64(w[f"{prefix}.attn_output.weight"]).T


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def reference_logits(arrays: dict[str, np.ndarray], meta: dict, ids: list[int]) -> np.ndarray:
    """Logits (T, vocab) of a Llama forward pass over ``ids``, llama.cpp style, in float64."""
    eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
    x = _f64(arrays["token_embd.weight"][ids])
    for layer in range(int(meta["llama.block_count"])):
        prefix = f"blk.{layer}"
        x = x + _attention(_rms_norm(x, arrays[f"{prefix}.attn_norm.weight"], eps), arrays, prefix, meta)
        h = _rms_norm(x, arrays[f"{prefix}.ffn_norm.weight"], eps)
        gate = h @ _f64(arrays[f"{prefix}.ffn_gate.weight"]).T
        up = h @ _f64(arrays[f"{prefix}.ffn_up.weight"]).T
        x = x + (_silu(gate) * up) @ _f64(arrays[f"{prefix}.ffn_down.weight"]).T
    x = _rms_norm(x, arrays["output_norm.weight"], eps)
    output = arrays.get("output.weight", arrays["token_embd.weight"])
    return x @ _f64(output).T
