"""Rebuild a Hugging Face fast tokenizer from a GGUF file's GPT-2 style BPE vocabulary.

Writes ``tokenizer.json`` in the format tokenizers 0.14 reads (merges as ``"a b"``
strings), ``tokenizer_config.json`` (with the chat template) and ``special_tokens_map.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from .gguf_metadata import ConversionError, get_field

#: GGUF token types (llama.cpp ``llama_token_type``) that become added special tokens.
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
SPECIAL_TOKEN_TYPES = (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)

# Llama 3 ("llama-bpe") split regex, as in its Hugging Face tokenizer.json.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer part of a GGUF file's metadata."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None

    def token(self, token_id: int | None) -> str | None:
        """The string of ``token_id``, or None."""
        if token_id is None or not 0 <= token_id < len(self.tokens):
            return None
        return self.tokens[token_id]

    @property
    def special_ids(self) -> list[int]:
        """Ids of control and user-defined tokens, in id order."""
        return [i for i, kind in enumerate(self.token_types) if kind in SPECIAL_TOKEN_TYPES]


def read_vocab(reader: gguf.GGUFReader) -> GGUFVocab:
    """Read and check the GPT-2 style BPE vocabulary; refuse any other tokenizer model."""
    model = get_field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(
            f"tokenizer model '{model}' is unsupported (only GPT-2 style BPE, 'gpt2', is supported)"
        )
    tokens = list(get_field(reader, "tokenizer.ggml.tokens"))
    token_types = list(get_field(reader, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = list(get_field(reader, "tokenizer.ggml.merges"))
    if len(token_types) != len(tokens):
        raise ConversionError(
            f"tokenizer.ggml.token_type has {len(token_types)} entries for {len(tokens)} tokens"
        )
    vocab = GGUFVocab(
        tokens=tokens,
        token_types=[int(t) for t in token_types],
        merges=merges,
        pre=str(get_field(reader, "tokenizer.ggml.pre", "default")),
        bos_id=_optional_id(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_optional_id(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_optional_id(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_optional_id(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(get_field(reader, "tokenizer.ggml.add_bos_token", False)),
        chat_template=get_field(reader, "tokenizer.chat_template", None),
    )
    pre_tokenizer(vocab.pre)  # refuse an unknown pre-tokenizer before any file is written
    return vocab


def _optional_id(reader: gguf.GGUFReader, key: str) -> int | None:
    value = get_field(reader, key, None)
    return None if value is None else int(value)


def pre_tokenizer(pre: str) -> dict[str, Any]:
    """The tokenizers pre-tokenizer for llama.cpp's ``tokenizer.ggml.pre`` name.

    ``default`` (files written before llama.cpp recorded the name) is mapped to the
    GPT-2 byte-level regex, which is what such files were converted from in practice.
    """
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if pre == "smollm":
        digits = {"type": "Digits", "individual_digits": True}
        return {"type": "Sequence", "pretokenizers": [digits, byte_level]}
    if pre in ("gpt-2", "default"):
        return byte_level
    if pre in ("llama-bpe", "llama3"):
        split = {
            "type": "Split",
            "pattern": {"Regex": _LLAMA3_SPLIT},
            "behavior": "Isolated",
            "invert": False,
        }
        return {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
    raise ConversionError(
        f"pre-tokenizer '{pre}' (tokenizer.ggml.pre) is unsupported "
        "(supported: smollm, gpt-2, llama-bpe, default)"
    )


def tokenizer_json(vocab: GGUFVocab) -> dict[str, Any]:
    """The ``tokenizer.json`` document (tokenizers 0.14 format)."""
    bpe_vocab: dict[str, int] = {}
    for token_id, token in enumerate(vocab.tokens):
        bpe_vocab.setdefault(token, token_id)  # a duplicate string keeps its first id
    added = [_added_token(i, vocab.tokens[i]) for i in vocab.special_ids]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer(vocab.pre),
        "post_processor": _post_processor(vocab),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": bpe_vocab,
            "merges": vocab.merges,
        },
    }


def _added_token(token_id: int, content: str) -> dict[str, Any]:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _post_processor(vocab: GGUFVocab) -> dict[str, Any]:
    """Byte-level offsets only, or a template prepending BOS when the GGUF asks for it."""
    bos = vocab.token(vocab.bos_id)
    if not (vocab.add_bos and bos is not None):
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    bos_piece = {"SpecialToken": {"id": bos, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos_piece, {"Sequence": {"id": "A", "type_id": 0}},
                 bos_piece, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [vocab.bos_id], "tokens": [bos]}},
    }


def special_tokens_map(vocab: GGUFVocab) -> dict[str, Any]:
    """``special_tokens_map.json``: bos/eos/unk/pad strings and the other special tokens."""
    named = {
        "bos_token": vocab.token(vocab.bos_id),
        "eos_token": vocab.token(vocab.eos_id),
        "unk_token": vocab.token(vocab.unk_id),
        "pad_token": vocab.token(vocab.pad_id if vocab.pad_id is not None else vocab.eos_id),
    }
    result: dict[str, Any] = {key: value for key, value in named.items() if value is not None}
    taken = set(result.values())
    others = [vocab.tokens[i] for i in vocab.special_ids if vocab.tokens[i] not in taken]
    if others:
        result["additional_special_tokens"] = others
    return result


def tokenizer_config(vocab: GGUFVocab, model_max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json`` for ``PreTrainedTokenizerFast``."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": vocab.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(model_max_length),
        **special_tokens_map(vocab),
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    return config


def write_tokenizer_files(vocab: GGUFVocab, out_dir: Path, model_max_length: int) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    out_dir = Path(out_dir)
    _write_json(out_dir / "tokenizer.json", tokenizer_json(vocab))
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config(vocab, model_max_length))
    _write_json(out_dir / "special_tokens_map.json", special_tokens_map(vocab))


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
