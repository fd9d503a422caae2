"""The OpenAI API on the embedded model, through the official ``openai`` SDK (issue 11's checks).

* ``schemas``: the 50 cases of :mod:`bench.schema_cases` with ``response_format: json_schema`` (strict): how
  many answers parse and validate (target: all), and the time per case.
* ``reuse``: a 10-turn chat, streamed, greedy, once on a backend with prompt prefix reuse and once on one
  without (``prompt_cache_sessions=0``): time to first token of each turn, the cached tokens reported, and
  whether both backends gave the same answers (they must). Target: turn 10's TTFT with reuse <= 0.3x without.
* ``constrained``: decoding speed (tokens/s between the first and the last token of a stream) of an answer
  constrained by a JSON schema against a free one. Target: the constraint costs <= 15%.

``python -m bench.openai_api [--parts schemas,reuse,constrained]``; results in ``bench/results/openai_api.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from bench.schema_cases import CASES
from bench.stack import REPO, Backend

MODEL = "SmolLM2-135M-Instruct"
RESULTS = REPO / "bench" / "results" / "openai_api.json"
QUESTIONS = ["Hi! Who are you?", "What is the capital of France?", "And of Italy?", "Name a famous Italian dish.",
             "How is it made?", "What wine goes with it?", "Tell me a fun fact about Rome.",
             "What is the Colosseum?", "When was it built?", "Summarize our conversation in one sentence."]


@contextlib.contextmanager
def embedded_backend(**settings: object) -> Iterator[Backend]:
    """``python -m backend`` on its embedded swarm (the prepared SmolLM2 in models/), with these settings."""
    from backend.swarm.launcher import free_port

    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PETALS_CHAT_HOST": "127.0.0.1",
           "PETALS_CHAT_PORT": str(port), "PETALS_CHAT_MODELS_DIR": str(REPO / "models"),
           "PETALS_CHAT_DEVICE": "cpu", "PETALS_CHAT_LOG_LEVEL": "warning",
           **{f"PETALS_CHAT_{name.upper()}": str(value) for name, value in settings.items()}}
    env.pop("PETALS_CHAT_INITIAL_PEERS", None)
    log = tmp / "backend.log"
    process = subprocess.Popen([sys.executable, "-m", "backend"], cwd=REPO, env=env, stdout=open(log, "w"),
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    backend = Backend(url=f"http://127.0.0.1:{port}", ws_url=f"ws://127.0.0.1:{port}", process=process, log=log)
    try:
        _wait_ready(backend, deadline=time.monotonic() + 600)
        yield backend
    finally:
        backend.stop()


def _wait_ready(backend: Backend, deadline: float) -> None:
    while True:
        if backend.process.poll() is not None:
            raise RuntimeError(f"backend exited:\n{backend.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            if backend.get_json("/healthz", timeout=2)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"backend not ready in time:\n{backend.log.read_text()[-3000:]}")
        time.sleep(0.5)  # polling pace


def client(backend: Backend):
    import openai

    return openai.OpenAI(base_url=backend.url + "/v1", api_key="unused", max_retries=0, timeout=300)


def schemas(api, cases: list | None = None, max_tokens: int = 160) -> dict:
    """Every case (default: all 50) answered with its schema enforced; each answer parsed and validated."""
    import jsonschema

    cases = CASES if cases is None else cases
    valid, failures, seconds = 0, [], []
    for question, schema in cases:
        started = time.perf_counter()
        result = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question + " Answer in JSON."}], temperature=0,
            max_tokens=max_tokens,
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema,
                                                                    "strict": True}})
        seconds.append(time.perf_counter() - started)
        content = result.choices[0].message.content
        try:
            jsonschema.validate(json.loads(content), schema)
            valid += 1
        except (ValueError, jsonschema.ValidationError) as e:
            failures.append({"question": question, "answer": content, "error": str(e).splitlines()[0]})
    return {"cases": len(cases), "valid": valid, "failures": failures, "seconds_total": round(sum(seconds), 2),
            "seconds_median": round(statistics.median(seconds), 3)}


def conversation(api, turns: int, max_tokens: int) -> list[dict]:
    """A chat of ``turns`` turns, streamed: each turn's TTFT, cached tokens and answer."""
    messages, out = [], []
    for question in QUESTIONS[:turns]:
        messages.append({"role": "user", "content": question})
        started = time.perf_counter()
        stream = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens,
                                             stream=True, stream_options={"include_usage": True})
        ttft, answer, usage = None, "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft if ttft is not None else time.perf_counter() - started
                answer += chunk.choices[0].delta.content
            usage = chunk.usage or usage
        messages.append({"role": "assistant", "content": answer})
        out.append({"ttft_s": round(ttft or 0.0, 4), "prompt_tokens": usage.prompt_tokens,
                    "cached_tokens": usage.prompt_tokens_details.cached_tokens, "answer": answer})
    return out


def decode_speed(api, response_format: dict | None, runs: int, max_tokens: int) -> float:
    """Median tokens/s between a stream's first and last token."""
    speeds = []
    for _ in range(runs):
        kwargs = {"response_format": response_format} if response_format else {}
        stream = api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
            temperature=0, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}, **kwargs)
        first = last = None
        tokens = 0
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                last = time.perf_counter()
                first = first or last
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        speeds.append((tokens - 1) / (last - first))
    return statistics.median(speeds)


STORY = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["title", "story"],
    "properties": {"title": {"type": "string"}, "story": {"type": "string"}}}}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_api", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="schemas,reuse,constrained")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per chat turn")
    parser.add_argument("--runs", type=int, default=3, help="streams per arm of the decoding-speed comparison")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    results: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine()}
    with embedded_backend() as backend:
        api = client(backend)
        if "schemas" in parts:
            results["schemas"] = schemas(api)
            print("schemas:", {k: v for k, v in results["schemas"].items() if k != "failures"}, flush=True)
        if "constrained" in parts:
            free = decode_speed(api, None, args.runs, 64)
            constrained = decode_speed(api, STORY, args.runs, 64)
            results["constrained"] = {"free_tok_s": round(free, 2), "constrained_tok_s": round(constrained, 2),
                                      "cost": round(1 - constrained / free, 3)}
            print("constrained:", results["constrained"], flush=True)
        if "reuse" in parts:
            results["reuse"] = {"with": conversation(api, args.turns, args.max_tokens)}
    if "reuse" in parts:
        with embedded_backend(prompt_cache_sessions=0) as backend:
            results["reuse"]["without"] = conversation(client(backend), args.turns, args.max_tokens)
        results["reuse"]["summary"] = _reuse_summary(results["reuse"])
        print("reuse:", results["reuse"]["summary"], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {RESULTS.relative_to(REPO)}")


def _reuse_summary(reuse: dict) -> dict:
    with_, without = reuse["with"], reuse["without"]
    return {"turns": len(with_), "last_ttft_with_s": with_[-1]["ttft_s"], "last_ttft_without_s": without[-1]["ttft_s"],
            "ratio": round(with_[-1]["ttft_s"] / without[-1]["ttft_s"], 3),
            "last_prompt_tokens": with_[-1]["prompt_tokens"], "last_cached_tokens": with_[-1]["cached_tokens"],
            "same_answers": [t["answer"] for t in with_] == [t["answer"] for t in without]}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{os.cpu_count()}-core {cpu}"


if __name__ == "__main__":
    main()
