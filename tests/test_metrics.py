"""Operational endpoints against the real backend: /metrics moves with traffic, /readyz, /healthz, request ids."""

from __future__ import annotations

import re
import time
import urllib.request

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.timeout(120)


def scrape(server) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_tokens_latencies_and_sessions_move(live_server):
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    before = scrape(live_server)
    assert value(before, "petals_chat_sessions_open") == 0

    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "metrics"}],
                                           max_tokens=4, temperature=0)
    stream = client.completions.create(model="tiny", prompt="Metrics stream", max_tokens=5, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    first = next(stream)
    during = scrape(live_server)  # the stream's session is open while it runs
    chunks = [first, *stream]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=1)
    after = scrape(live_server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(during, "petals_chat_sessions_open") == 1
    assert value(after, "petals_chat_sessions_open") == 0
    assert delta("petals_chat_requests_total", route="/v1/chat/completions", status="200") == 1
    assert delta("petals_chat_requests_total", route="/v1/completions", status="200") == 1
    assert delta("petals_chat_requests_total", route="/v1/completions", status="404") == 1
    assert delta("petals_chat_requests_total", route="/metrics", status="200") >= 1
    tokens = plain.usage.completion_tokens + chunks[-1].usage.completion_tokens
    assert delta("petals_chat_tokens_generated_total") == tokens
    # every generation: one time-to-first-token, then one inter-token latency per further token
    assert delta("petals_chat_time_to_first_token_seconds_count") == 2
    assert delta("petals_chat_inter_token_latency_seconds_count") == tokens - 2
    assert delta("petals_chat_time_to_first_token_seconds_sum") > 0
    assert delta("petals_chat_time_to_first_token_seconds_bucket", le="+Inf") == 2


def test_readyz_reports_servers_and_blocks_per_model(live_server):
    response = httpx.get(live_server.url + "/readyz", timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ready", body
    assert set(body["models"]) == {"tiny", "tiny-private"}
    for details in body["models"].values():
        assert details["ready"] and details["swarm_ok"]
        assert details["servers"] == 1 and details["blocks_served"] == details["blocks_total"] == 4
    assert body["sessions_open"] == 0
    health = httpx.get(live_server.url + "/healthz").json()
    assert health["status"] == "ok" and all(m["ready"] for m in health["models"].values())


def test_request_ids_are_echoed_and_logged(live_server):
    given = httpx.post(live_server.url + "/v1/completions", headers={"X-Request-ID": "req-metrics-42"},
                       json={"model": "tiny", "prompt": "id", "max_tokens": 2}, timeout=60)
    assert given.status_code == 200 and given.headers["X-Request-ID"] == "req-metrics-42"
    generated = httpx.get(live_server.url + "/v1/models").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", generated)
    deadline = time.monotonic() + 5
    while True:
        log = live_server.log.read_text()
        if ("request_id=" + generated) in log or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert re.search(r"POST /v1/completions 200 [\d.]+ms request_id=req-metrics-42", log)
    assert re.search(r"completion done request_id=req-metrics-42 model=tiny prompt_tokens=\d+ completion_tokens=2", log)
    assert "GET /v1/models 200" in log and "request_id=" + generated in log
