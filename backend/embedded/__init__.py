"""The embedded chat model: turning a Llama GGUF file into a Hugging Face folder.

Modules (nothing heavy is imported here):

- ``gguf_metadata``: opening a GGUF file and reading its metadata, ``ConversionError``.
- ``gguf_convert``: weights and ``config.json`` from a Llama-architecture GGUF.
- ``gguf_tokenizer``: ``tokenizer.json`` and its configs from a GPT-2 style BPE vocabulary.
- ``prepare``: fetch the embedded SmolLM2-135M-Instruct, convert, verify, publish atomically.
- ``cli``: ``python -m backend model prepare ...``.
"""
