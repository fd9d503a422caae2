"""The GGUF -> Hugging Face converter, on tiny synthetic Llama files written with gguf.GGUFWriter."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from tokenizers import Tokenizer
from transformers import AutoTokenizer, LlamaForCausalLM

from backend.embedded.gguf_convert import ConversionError, convert_gguf, unpermute_rows
from backend.embedded.gguf_tokenizer import pre_tokenizer

try:
    from tests import tiny_gguf
    from tests.llama_reference import gguf_arrays, llama_cpp_permute, reference_logits
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    import tiny_gguf
    from llama_reference import gguf_arrays, llama_cpp_permute, reference_logits

QT = gguf.GGMLQuantizationType
SUPPORTED = [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1]


def convert(tmp_path: Path, **options) -> tuple[tiny_gguf.TinyModel, Path]:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "tiny.gguf", **options)
    out = tmp_path / "hf"
    convert_gguf(model.path, out, progress=False)
    return model, out


# --- the Q/K permutation ------------------------------------------------------------------


def test_llama_cpp_permute_interleaves_rotary_halves() -> None:
    """The test's permutation is llama.cpp's: row 2i <- row i, row 2i+1 <- row i + d/2, per head."""
    heads, dim = 3, 8
    weight = np.arange(heads * dim * 2, dtype=np.float32).reshape(heads * dim, 2)
    permuted = llama_cpp_permute(weight, heads)
    for head in range(heads):
        for i in range(dim // 2):
            np.testing.assert_array_equal(permuted[head * dim + 2 * i], weight[head * dim + i])
            np.testing.assert_array_equal(permuted[head * dim + 2 * i + 1], weight[head * dim + i + dim // 2])


@pytest.mark.parametrize("heads", [1, 2, 4, 9])
def test_unpermute_rows_inverts_llama_cpp_permute(heads: int) -> None:
    weight = np.random.default_rng(heads).standard_normal((heads * 16, 24)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rows(llama_cpp_permute(weight, heads), heads), weight)


# --- weights, per tensor type ---------------------------------------------------------------


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda q: q.name)
def test_weights_equal_the_originals(tmp_path: Path, qtype: QT) -> None:
    """Every tensor comes back un-permuted and transposed right, equal to decode(encode(original))."""
    model, out = convert(tmp_path, qtype=qtype)
    converted = load_file(str(out / "model.safetensors"))
    assert set(converted) == set(model.expected)
    for name, expected in model.expected.items():
        assert converted[name].dtype == np.float32
        np.testing.assert_array_equal(converted[name], expected, err_msg=name)


def test_tied_output_has_no_lm_head(tmp_path: Path) -> None:
    _, out = convert(tmp_path, tied=True)
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    hf = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    assert torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)


def test_untied_output_keeps_lm_head(tmp_path: Path) -> None:
    model, out = convert(tmp_path, tied=False)
    weights = load_file(str(out / "model.safetensors"))
    np.testing.assert_array_equal(weights["lm_head.weight"], model.expected["lm_head.weight"])
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    hf = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)


def test_config_and_generation_config(tmp_path: Path) -> None:
    _, out = convert(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (64, 128, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert (config["rms_norm_eps"], config["rope_theta"]) == (1e-5, 10000.0)
    assert (config["max_position_embeddings"], config["vocab_size"]) == (256, tiny_gguf.VOCAB)
    assert (config["bos_token_id"], config["eos_token_id"], config["torch_dtype"]) == (1, 2, "float32")
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


# --- end to end: transformers on the converted folder vs a llama.cpp-style reference -------


@pytest.mark.parametrize(
    ("qtype", "tied"),
    [(QT.F32, True), (QT.F32, False), (QT.Q4_1, True)],
    ids=["F32-tied", "F32-untied", "Q4_1-tied"],
)
def test_logits_match_llama_cpp_style_reference(tmp_path: Path, qtype: QT, tied: bool) -> None:
    """Reference: GGUF-layout weights with interleaved rotary pairs (no un-permute involved)."""
    model, out = convert(tmp_path, qtype=qtype, tied=tied)
    ids = [1, 45, 260, 7, 99, 2, 150, 3]
    arrays, meta = gguf_arrays(model.path)
    expected = reference_logits(arrays, meta, ids)
    hf = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    with torch.inference_mode():
        logits = hf(torch.tensor([ids])).logits[0].double().numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


# --- tokenizer ------------------------------------------------------------------------------


def test_tokenizer_loads_with_transformers(tmp_path: Path) -> None:
    _, out = convert(tmp_path)
    tokens, _ = tiny_gguf.tiny_vocab()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encode("hello world")
    assert tokenizer.convert_ids_to_tokens(ids) == ["hello", "Ġworld"]
    assert ids == [tokens.index("hello"), tokens.index("Ġworld")]
    assert tokenizer.decode(ids) == "hello world"
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tokenizer.unk_token == "<|endoftext|>"
    # control and user-defined tokens keep their GGUF ids and are matched whole, never split
    text = "<|im_start|>hello<tool><|im_end|>"
    assert tokenizer.encode(text) == [1, tokens.index("hello"), tokens.index("<tool>"), 2]
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == "hello"
    assert len(tokenizer) == len(tokens)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_config_files(tmp_path: Path) -> None:
    _, out = convert(tmp_path)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] is False
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["model_max_length"] == 256
    assert config["chat_template"] == tiny_gguf.CHAT_TEMPLATE
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special["eos_token"] == "<|im_end|>"
    assert "<tool>" in special["additional_special_tokens"]


def test_smollm_pre_tokenizer_splits_digits(tmp_path: Path) -> None:
    _, out = convert(tmp_path, pre="smollm")
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.encode("in 2024").tokens == ["i", "n", "Ġ", "2", "0", "2", "4"]


def test_llama_bpe_pre_tokenizer_groups_three_digits(tmp_path: Path) -> None:
    _, out = convert(tmp_path, pre="llama-bpe")
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    pieces = tokenizer.pre_tokenizer.pre_tokenize_str("12345 hello")
    assert [piece for piece, _ in pieces] == ["123", "45", "Ġhello"]


# --- refusals -------------------------------------------------------------------------------


def refused(tmp_path: Path, path: Path) -> str:
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as info:
        convert_gguf(path, out, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists() or not any(out.iterdir()), "nothing may be written for a refused file"
    return message


def test_refuses_other_architecture(tmp_path: Path) -> None:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    assert refused(tmp_path, model.path) == "architecture 'gpt2' is unsupported (only 'llama' is supported)"


def test_refuses_other_tokenizer_model(tmp_path: Path) -> None:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "spm.gguf", tokenizer_model="llama")
    assert refused(tmp_path, model.path).startswith("tokenizer model 'llama' is unsupported")


def test_refuses_unknown_pre_tokenizer(tmp_path: Path) -> None:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "pre.gguf", pre="qwen2")
    assert refused(tmp_path, model.path).startswith("pre-tokenizer 'qwen2' (tokenizer.ggml.pre) is unsupported")
    with pytest.raises(ConversionError):
        pre_tokenizer("qwen2")


def test_refuses_other_tensor_type(tmp_path: Path) -> None:
    rows, cols = 128, 64  # ffn_gate is (FFN, HIDDEN); Q5_0 packs 32 values in 22 bytes
    raw = np.zeros((rows, cols // 32 * 22), dtype=np.uint8)
    model = tiny_gguf.write_tiny_gguf(tmp_path / "q5.gguf", raw_override={"blk.1.ffn_gate.weight": (raw, QT.Q5_0)})
    assert refused(tmp_path, model.path).startswith("tensor type Q5_0 (tensor 'blk.1.ffn_gate.weight') is unsupported")


def test_refuses_truncated_file(tmp_path: Path) -> None:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "cut.gguf")
    data = model.path.read_bytes()
    model.path.write_bytes(data[: len(data) // 2])
    message = refused(tmp_path, model.path)
    assert message.startswith(f"{model.path}: ") and "truncated" in message


@pytest.mark.parametrize("keep", [10, 3000])
def test_refuses_file_cut_inside_the_header(tmp_path: Path, keep: int) -> None:
    model = tiny_gguf.write_tiny_gguf(tmp_path / "head.gguf")
    model.path.write_bytes(model.path.read_bytes()[:keep])
    assert "truncated or damaged" in refused(tmp_path, model.path)


def test_refuses_non_gguf_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a gguf file at all" * 10)
    assert "not a valid GGUF file" in refused(tmp_path, junk)
    assert refused(tmp_path, tmp_path / "absent.gguf").endswith("absent.gguf: no such file")
