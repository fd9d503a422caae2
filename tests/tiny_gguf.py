"""Write tiny synthetic Llama GGUF files for the conversion tests (with ``gguf.GGUFWriter``).

The model: 2 layers, hidden 64, 4 heads / 2 KV heads, FFN 128, a byte-level GPT-2 BPE
vocabulary of 269 tokens with a few merges and ChatML special tokens. Q and K are permuted the
way llama.cpp's converter does it, so a correct converter must undo it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

try:
    from tests.llama_reference import llama_cpp_permute
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from llama_reference import llama_cpp_permute

QT = gguf.GGMLQuantizationType
HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, CONTEXT = 64, 128, 2, 4, 2, 256
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
USER_DEFINED = "<tool>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int]]:
    """Tokens and GGUF token types: 3 control tokens, 256 bytes, the merge results, one user-defined."""
    tokens = SPECIALS + byte_level_alphabet() + [m.replace(" ", "") for m in MERGES] + [USER_DEFINED]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    return tokens, types


VOCAB = len(tiny_vocab()[0])


@dataclass
class TinyModel:
    """What was written: the Hugging Face weights a converter must produce (after quantization)."""

    path: Path
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    tied: bool = True


def _hf_weights(seed: int, tied: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    kv = KV_HEADS * HIDDEN // HEADS

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * 0.2).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)

    weights = {"model.embed_tokens.weight": matrix(VOCAB, HIDDEN), "model.norm.weight": norm()}
    if not tied:
        weights["lm_head.weight"] = matrix(VOCAB, HIDDEN)
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        weights.update({
            f"{p}.input_layernorm.weight": norm(),
            f"{p}.post_attention_layernorm.weight": norm(),
            f"{p}.self_attn.q_proj.weight": matrix(HIDDEN, HIDDEN),
            f"{p}.self_attn.k_proj.weight": matrix(kv, HIDDEN),
            f"{p}.self_attn.v_proj.weight": matrix(kv, HIDDEN),
            f"{p}.self_attn.o_proj.weight": matrix(HIDDEN, HIDDEN),
            f"{p}.mlp.gate_proj.weight": matrix(FFN, HIDDEN),
            f"{p}.mlp.up_proj.weight": matrix(FFN, HIDDEN),
            f"{p}.mlp.down_proj.weight": matrix(HIDDEN, FFN),
        })
    return weights


def _gguf_name(hf_name: str) -> str:
    table = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf_name in table:
        return table[hf_name]
    parts = hf_name.split(".")
    layer, part = parts[2], ".".join(parts[3:-1])
    short = {
        "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }[part]
    return f"blk.{layer}.{short}.weight"


def _encode(weight: np.ndarray, qtype: QT) -> tuple[np.ndarray, np.ndarray]:
    """(bytes or array to write, what dequantizing it gives back)."""
    if qtype == QT.F32:
        return weight, weight
    if qtype == QT.F16:
        half = weight.astype(np.float16)
        return half, half.astype(np.float32)
    raw = gguf.quants.quantize(weight, qtype)
    return raw, gguf.quants.dequantize(raw, qtype).reshape(weight.shape)


def write_tiny_gguf(
    path: Path,
    *,
    qtype: QT = QT.F32,
    tied: bool = True,
    arch: str = "llama",
    tokenizer_model: str = "gpt2",
    pre: str = "smollm",
    seed: int = 0,
    raw_override: dict[str, tuple[np.ndarray, QT]] | None = None,
) -> TinyModel:
    """Write a tiny Llama GGUF to ``path``; 2-D weights in ``qtype``, norms in F32."""
    writer = gguf.GGUFWriter(path, arch=arch)
    _write_metadata(writer, arch, tokenizer_model, pre)
    model = TinyModel(path=Path(path), tied=tied)
    for hf_name, weight in _hf_weights(seed, tied).items():
        stored = weight
        if hf_name.endswith("q_proj.weight"):
            stored = llama_cpp_permute(weight, HEADS)
        elif hf_name.endswith("k_proj.weight"):
            stored = llama_cpp_permute(weight, KV_HEADS)
        name = _gguf_name(hf_name)
        if raw_override and name in raw_override:
            raw, raw_type = raw_override[name]
            writer.add_tensor(name, raw, raw_dtype=raw_type)
            continue
        tensor_type = qtype if weight.ndim == 2 else QT.F32
        raw, _ = _encode(stored, tensor_type)
        # row-wise quantization commutes with the row permutation: expected = decode(encode(weight))
        model.expected[hf_name] = _encode(weight, tensor_type)[1]
        writer.add_tensor(name, raw, raw_dtype=None if tensor_type in (QT.F32, QT.F16) else tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _write_metadata(writer: gguf.GGUFWriter, arch: str, tokenizer_model: str, pre: str) -> None:
    writer.add_name("tiny-llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(VOCAB)
    tokens, types = tiny_vocab()
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
