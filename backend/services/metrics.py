"""Prometheus metrics, one registry per app (so several apps can live in one process, e.g. in tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("petals_chat_requests", "HTTP requests and WebSocket connections by route and status",
                                ["route", "status"], registry=r)
        self.sessions_open = Gauge("petals_chat_sessions_open", "Inference sessions open now", registry=r)
        self.tokens_generated = Counter("petals_chat_tokens_generated", "Tokens generated", registry=r)
        self.time_to_first_token = Histogram("petals_chat_time_to_first_token_seconds",
                                             "Time from a generation request to its first token",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("petals_chat_inter_token_latency_seconds",
                                             "Time between consecutive tokens of a generation",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.swarm_errors = Counter("petals_chat_swarm_errors", "Generations that failed in the swarm", registry=r)
        self.prompt_cache_sessions = Gauge("petals_chat_prompt_cache_sessions",
                                           "Inference sessions kept open for prompt prefix reuse", registry=r)
        self.prompt_cache_tokens = Counter("petals_chat_prompt_cache_tokens",
                                           "Prompt tokens a kept session already held (not prefilled again)",
                                           registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
