"""Petals Chat backend: a Quart service over the Petals client.

Nothing heavy is imported here: torch, transformers and petals load only when
an engine is created (see ``backend.engine``).
"""

__version__ = "0.1.0"
