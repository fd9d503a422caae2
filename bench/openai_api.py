"""The OpenAI API on the embedded model, through the official ``openai`` SDK (issue 11's checks).

* ``schemas``: the 50 cases of :mod:`bench.schema_cases` with ``response_format: json_schema`` (strict): how
  many answers parse and validate (target: all), and the time per case.
* ``reuse``: a 10-turn chat, streamed, greedy, once on a backend with prompt prefix reuse and once on one
  without (``prompt_cache_sessions=0``): time to first token of each turn, the cached tokens reported, and
  whether both backends gave the same answers (they must). Target: turn 10's TTFT with reuse <= 0.3x without.
  Then turn 10's question is asked in other words (an edited message): with reuse its session is rewound.
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
    """A chat of ``turns`` turns, streamed, then its last question asked again in other words (an edited
    message: the prompt parts from the kept session's history there): each turn's TTFT, cached tokens, answer."""
    messages, out = [], []
    for question in [*QUESTIONS[:turns], EDITED]:
        if question is EDITED:
            messages = messages[:-2]  # the last question and its answer replaced
        messages.append({"role": "user", "content": question})
        out.append(chat_turn(api, messages, max_tokens))
        messages.append({"role": "assistant", "content": out[-1]["answer"]})
    return out


EDITED = "In one sentence, what did we talk about?"


def chat_turn(api, messages: list[dict], max_tokens: int) -> dict:
    started = time.perf_counter()
    stream = api.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens,
                                         stream=True, stream_options={"include_usage": True})
    ttft, answer, usage = None, "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft if ttft is not None else time.perf_counter() - started
            answer += chunk.choices[0].delta.content
        usage = chunk.usage or usage
    return {"ttft_s": round(ttft or 0.0, 4), "prompt_tokens": usage.prompt_tokens,
            "cached_tokens": usage.prompt_tokens_details.cached_tokens, "answer": answer}


def stream_gaps(api, response_format: dict | None, max_tokens: int) -> list[float]:
    """Seconds between consecutive content chunks (one token each) of one greedy streamed answer."""
    kwargs = {"response_format": response_format} if response_format else {}
    stream = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story about a dragon and a knight."}],
        temperature=0, max_tokens=max_tokens, stream=True, **kwargs)
    stamps = [time.perf_counter() for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def decode_speeds(api, runs: int, max_tokens: int = 64) -> dict:
    """Tokens/s (1 / the median time between tokens) of free and JSON-schema answers, the two arms alternating
    so that the machine's load hits both alike; and the grammar's own time per token, measured alone."""
    gaps: dict[str, list[float]] = {"free": [], "constrained": []}
    for _ in range(runs):
        gaps["free"] += stream_gaps(api, None, max_tokens)
        gaps["constrained"] += stream_gaps(api, STORY, max_tokens)
    free, constrained = (1 / statistics.median(gaps[arm]) for arm in ("free", "constrained"))
    return {"free_tok_s": round(free, 2), "constrained_tok_s": round(constrained, 2),
            "cost": round(1 - constrained / free, 3), "tokens_per_arm": len(gaps["free"]),
            "grammar_ms_per_token": round(grammar_step_ms(), 3)}


def grammar_step_ms(steps: int = 200) -> float:
    """Median time of one step of the grammar's logits processor (mask + apply, warm), over a JSON answer."""
    import torch
    from transformers import AutoTokenizer

    from backend.engine.grammar import GrammarProcessor, json_schema_grammar

    tokenizer = AutoTokenizer.from_pretrained(REPO / "models" / MODEL)
    text = json.dumps({"title": "The dragon", "story": "Once upon a time, a dragon and a knight met. " * 40})
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:steps]
    grammar = json_schema_grammar(STORY["json_schema"]["schema"])
    times = []
    for run in range(2):  # the first run warms the grammar's lexer up
        processor, seen = GrammarProcessor(tokenizer, grammar), [0]
        for token in ids:
            scores = torch.zeros(1, len(tokenizer))
            started = time.perf_counter()
            processor(torch.tensor([seen]), scores)
            if run:
                times.append(time.perf_counter() - started)
            seen.append(token)
    return statistics.median(times) * 1000


# a long story: the grammar keeps the string open for 300 characters, so both arms write about as many tokens
STORY = {"type": "json_schema", "json_schema": {"name": "story", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["title", "story"],
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string", "minLength": 300}}}}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.openai_api", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="schemas,reuse,constrained")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=48, help="new tokens per chat turn")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="dtype of the client and the embedded swarm (auto: bfloat16 on CPUs with AVX-512)")
    parser.add_argument("--runs", type=int, default=5, help="streams per arm of the decoding-speed comparison")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    stamp = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": _machine()}
    results: dict = {}
    dtypes = {"dtype": args.dtype, "embedded_dtype": args.dtype}
    with embedded_backend(**dtypes) as backend:
        api = client(backend)
        if "schemas" in parts:
            results["schemas"] = schemas(api)
            print("schemas:", {k: v for k, v in results["schemas"].items() if k != "failures"}, flush=True)
        if "constrained" in parts:
            results["constrained"] = decode_speeds(api, args.runs)
            print("constrained:", results["constrained"], flush=True)
        if "reuse" in parts:
            results["reuse"] = {"with": conversation(api, args.turns, args.max_tokens)}
    if "reuse" in parts:
        with embedded_backend(prompt_cache_sessions=0, **dtypes) as backend:
            results["reuse"]["without"] = conversation(client(backend), args.turns, args.max_tokens)
        results["reuse"]["summary"] = _reuse_summary(results["reuse"])
        print("reuse:", results["reuse"]["summary"], flush=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # parts not run keep their last results
    suffix = "" if args.dtype == "auto" else f"_{args.dtype}"
    saved.update({part + suffix: {**stamp, "dtype": args.dtype, **value} for part, value in results.items()})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"results in {RESULTS.relative_to(REPO)}")


def _reuse_summary(reuse: dict) -> dict:
    """Turn 10 (the last of the conversation) and the edited turn after it, with reuse and without."""
    (*turns, last, edit), (*_, last_without, edit_without) = reuse["with"], reuse["without"]
    return {"turns": len(turns) + 1, "last_ttft_with_s": last["ttft_s"], "last_ttft_without_s": last_without["ttft_s"],
            "ratio": round(last["ttft_s"] / last_without["ttft_s"], 3),
            "last_prompt_tokens": last["prompt_tokens"], "last_cached_tokens": last["cached_tokens"],
            "edit_ttft_with_s": edit["ttft_s"], "edit_ttft_without_s": edit_without["ttft_s"],
            "edit_prompt_tokens": edit["prompt_tokens"], "edit_cached_tokens": edit["cached_tokens"],
            "same_answers": [t["answer"] for t in reuse["with"]] == [t["answer"] for t in reuse["without"]]}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{os.cpu_count()}-core {cpu}"


if __name__ == "__main__":
    main()
