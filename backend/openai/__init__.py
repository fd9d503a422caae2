"""The OpenAI-compatible API (``/v1``), split three ways: ``schemas`` (the wire format),
``routes`` (parse and format), ``serving`` (the work, over the generation service)."""
