"""Petals Chat benchmarks: ``python -m bench`` (see ``bench/__main__.py``).

Measures, on one local swarm in one run, the raw Petals client in-process (the
limit) against the backend's WebSocket, HTTP and OpenAI APIs: single-stream
tokens/s and latency, concurrency up to 64 chat sessions, and the backend's
own CPU and memory cost.
"""
