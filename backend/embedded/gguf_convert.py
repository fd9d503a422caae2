"""Convert a Llama-architecture GGUF file into a Hugging Face model folder.

The folder holds ``model.safetensors`` (fp32), ``config.json``, ``generation_config.json``
and the tokenizer files (see ``gguf_tokenizer``). Tensors are read and dequantized with the
``gguf`` library; this module maps names, reverses GGUF's shapes and undoes llama.cpp's
row permutation of the Q and K projections.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import save_file
from tqdm import tqdm

from .gguf_metadata import ConversionError, float32_value, get_field, open_reader
from .gguf_tokenizer import read_vocab, write_tokenizer_files

__all__ = ["ConversionError", "LlamaMetadata", "convert_gguf", "read_llama_metadata", "unpermute_rows"]

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1})

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


@dataclass(frozen=True)
class LlamaMetadata:
    """The ``llama.*`` hyper-parameters of a GGUF file."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    context_length: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def read_llama_metadata(reader: gguf.GGUFReader) -> LlamaMetadata:
    """Read the hyper-parameters; refuse other architectures and Llama variants we cannot express."""
    arch = get_field(reader, "general.architecture")
    if arch != "llama":
        raise ConversionError(f"architecture '{arch}' is unsupported (only 'llama' is supported)")
    heads = int(get_field(reader, "llama.attention.head_count"))
    meta = LlamaMetadata(
        hidden_size=int(get_field(reader, "llama.embedding_length")),
        intermediate_size=int(get_field(reader, "llama.feed_forward_length")),
        num_layers=int(get_field(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(get_field(reader, "llama.attention.head_count_kv", heads)),
        rms_norm_eps=float32_value(get_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float32_value(get_field(reader, "llama.rope.freq_base", 10000.0)),
        context_length=int(get_field(reader, "llama.context_length")),
        vocab_size=_vocab_size(reader),
    )
    _refuse_unsupported_variants(reader, meta)
    return meta


def _vocab_size(reader: gguf.GGUFReader) -> int:
    size = get_field(reader, "llama.vocab_size", None)
    if size is None:
        size = len(get_field(reader, "tokenizer.ggml.tokens"))
    return int(size)


def _refuse_unsupported_variants(reader: gguf.GGUFReader, meta: LlamaMetadata) -> None:
    """Mixture of experts, rope scaling and partial rotary do not fit transformers 4.34's Llama."""
    if meta.num_heads <= 0 or meta.hidden_size % meta.num_heads or meta.num_heads % max(meta.num_kv_heads, 1):
        raise ConversionError(
            f"attention shape (hidden {meta.hidden_size}, {meta.num_heads} heads, "
            f"{meta.num_kv_heads} KV heads) is unsupported"
        )
    experts = int(get_field(reader, "llama.expert_count", 0) or 0)
    if experts:
        raise ConversionError(f"mixture of experts (llama.expert_count = {experts}) is unsupported")
    scaling = get_field(reader, "llama.rope.scaling.type", "none")
    if scaling not in ("none", ""):
        raise ConversionError(f"rope scaling '{scaling}' (llama.rope.scaling.type) is unsupported")
    rotary = int(get_field(reader, "llama.rope.dimension_count", meta.head_dim))
    if rotary != meta.head_dim:
        raise ConversionError(
            f"partial rotary embedding (llama.rope.dimension_count {rotary} != head size {meta.head_dim}) "
            "is unsupported"
        )
    key_length = int(get_field(reader, "llama.attention.key_length", meta.head_dim))
    if key_length != meta.head_dim:
        raise ConversionError(
            f"attention key length {key_length} != hidden_size/heads {meta.head_dim} is unsupported"
        )


def hf_tensor_name(name: str, num_layers: int) -> str:
    """The Hugging Face Llama name of GGUF tensor ``name``; refuse any other tensor."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    match = _BLOCK_RE.match(name)
    if match and match.group(2) in _BLOCK_NAMES and int(match.group(1)) < num_layers:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"
    raise ConversionError(f"tensor '{name}' is unsupported (not part of a Llama model)")


def expected_shapes(meta: LlamaMetadata, tied: bool) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor name with its shape, for a Llama with ``meta``'s sizes."""
    h, f, kv = meta.hidden_size, meta.intermediate_size, meta.num_kv_heads * meta.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (meta.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not tied:
        shapes["lm_head.weight"] = (meta.vocab_size, h)
    per_layer = {
        "input_layernorm": (h,),
        "post_attention_layernorm": (h,),
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (f, h),
        "mlp.up_proj": (f, h),
        "mlp.down_proj": (h, f),
    }
    for layer in range(meta.num_layers):
        for part, shape in per_layer.items():
            shapes[f"model.layers.{layer}.{part}.weight"] = shape
    return shapes


def unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's per-head row permutation of a Q or K projection (rows = n_head * head_dim)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _plan(reader: gguf.GGUFReader, meta: LlamaMetadata) -> tuple[dict[str, Any], bool]:
    """Map each GGUF tensor to its HF name, check types and shapes; return (hf name -> tensor, tied)."""
    tensors: dict[str, Any] = {}
    for tensor in reader.tensors:
        hf_name = hf_tensor_name(tensor.name, meta.num_layers)
        if tensor.tensor_type not in SUPPORTED_TYPES:
            raise ConversionError(
                f"tensor type {tensor.tensor_type.name} (tensor '{tensor.name}') is unsupported "
                f"(supported: {', '.join(sorted(t.name for t in SUPPORTED_TYPES))})"
            )
        tensors[hf_name] = tensor
    tied = "lm_head.weight" not in tensors
    expected = expected_shapes(meta, tied)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ConversionError(f"GGUF file lacks {len(missing)} Llama tensor(s), first: '{missing[0]}'")
    for hf_name, tensor in tensors.items():
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        if shape != expected[hf_name]:
            raise ConversionError(
                f"tensor '{tensor.name}' has shape {shape}, expected {expected[hf_name]} from the metadata"
            )
    return tensors, tied


def _dequantize(tensor: Any, meta: LlamaMetadata, hf_name: str) -> np.ndarray:
    """The fp32 Hugging Face array for one GGUF tensor (Q/K rows un-permuted)."""
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except Exception as exc:
        raise ConversionError(f"tensor '{tensor.name}' cannot be decoded ({type(exc).__name__}: {exc})") from exc
    array = np.ascontiguousarray(array, dtype=np.float32).reshape(shape)
    if hf_name.endswith("self_attn.q_proj.weight"):
        array = unpermute_rows(array, meta.num_heads)
    elif hf_name.endswith("self_attn.k_proj.weight"):
        array = unpermute_rows(array, meta.num_kv_heads)
    return np.ascontiguousarray(array)


def model_config(meta: LlamaMetadata, tied: bool, reader: gguf.GGUFReader) -> dict[str, Any]:
    """``config.json`` for ``LlamaForCausalLM``."""
    bos = get_field(reader, "tokenizer.ggml.bos_token_id", None)
    eos = get_field(reader, "tokenizer.ggml.eos_token_id", None)
    pad = get_field(reader, "tokenizer.ggml.padding_token_id", None)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta.hidden_size,
        "intermediate_size": meta.intermediate_size,
        "num_hidden_layers": meta.num_layers,
        "num_attention_heads": meta.num_heads,
        "num_key_value_heads": meta.num_kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": meta.rms_norm_eps,
        "rope_theta": meta.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": meta.context_length,
        "vocab_size": meta.vocab_size,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "pad_token_id": None if pad is None else int(pad),
        "tie_word_embeddings": tied,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def generation_config(config: dict[str, Any]) -> dict[str, Any]:
    """``generation_config.json``: bos/eos from the config, pad falling back to eos."""
    pad = config["pad_token_id"] if config["pad_token_id"] is not None else config["eos_token_id"]
    result = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], "pad_token_id": pad}
    return {key: value for key, value in result.items() if value is not None}


def convert_gguf(gguf_path: Path, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Convert ``gguf_path`` into the Hugging Face folder ``out_dir`` (created if needed).

    Everything is checked (architecture, tokenizer, tensor types, names and shapes) before
    any file is written. Returns the ``config.json`` contents. Raises ``ConversionError``.
    """
    reader = open_reader(Path(gguf_path))
    meta = read_llama_metadata(reader)
    vocab = read_vocab(reader)
    plan, tied = _plan(reader, meta)
    config = model_config(meta, tied, reader)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for hf_name, tensor in tqdm(plan.items(), desc="Converting tensors", unit="tensor", disable=not progress):
        arrays[hf_name] = _dequantize(tensor, meta, hf_name)
    save_file(arrays, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del arrays
    _write_json(out_dir / "config.json", config)
    _write_json(out_dir / "generation_config.json", generation_config(config))
    write_tokenizer_files(vocab, out_dir, meta.context_length)
    return config


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
