"""The inference engine: everything that touches torch, transformers and Petals.

``backend.engine.types`` defines the interface the services depend on; the
Petals implementation lives in ``backend.engine.petals_engine`` and is imported
only when the app starts (never at import time of ``backend``).
"""
