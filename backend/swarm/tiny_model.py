"""A tiny random-weight Llama for tests and quick benchmarks.

Four layers of hidden size 64 start in seconds on a local swarm, and their greedy
output over Petals equals plain ``transformers`` token for token: an exact fixture.
It is paired with a real tokenizer (the embedded model's), so prompts, special
tokens and the chat template are real.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_model(folder: Path, tokenizer_dir: Path, *, seed: int = 0, layers: int = 4) -> Path:
    """Save a seeded random Llama with ``tokenizer_dir``'s tokenizer into ``folder``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    tok_config = json.loads((tokenizer_dir / "config.json").read_text())
    config = transformers.LlamaConfig(
        vocab_size=tok_config["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # random init gives near-uniform logits; widen them so greedy choices are unambiguous
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder
