"""Schema-driven fuzzing of every operation in ``/openapi.json`` against the real backend.

Request bodies are drawn by hypothesis from the document's own JSON schemas: mostly
valid requests, and valid requests with one field replaced by a wrong value (a wrong
type, out of range, or removed). Every answer must be below 500 and its body must match
the schema the document gives for that status and content type (each event of a
stream included). The budget is fixed (``BUDGET`` cases, derandomized, so a run is
reproducible); generation lengths are kept to a few tokens so that each case is fast.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.timeout(300)

BUDGET = {("post", "/v1/chat/completions"): 43, ("post", "/v1/completions"): 45,
          ("post", "/api/v1/generate"): 35, ("get", "/v1/models"): 5, ("get", "/v1/models/{model}"): 4,
          ("get", "/api/v1/models"): 5,
          ("get", "/api/v1/swarm"): 3, ("get", "/healthz"): 3, ("get", "/readyz"): 3,
          ("get", "/metrics"): 4}  # 150 cases in all
TOKEN_BUDGETS = {"max_tokens", "max_completion_tokens", "max_new_tokens"}  # 1..4 when valid
MODELS = ["tiny", "tiny-alias", "tiny-private", "no-such-model"]
ran: dict[str, int] = {}


# ---- JSON schema -> hypothesis strategies ---------------------------------------------------

def resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        schema = root["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def values(schema: dict, root: dict, name: str = "") -> st.SearchStrategy:
    """Values valid for ``schema`` (small ones: short texts and lists, tiny token budgets)."""
    schema = resolve(schema, root)
    if name in TOKEN_BUDGETS:
        return st.integers(1, 4)
    if name == "max_length":
        return st.integers(1, 8)
    if name == "model":
        return st.sampled_from(MODELS)
    if "anyOf" in schema:
        return st.one_of([values(s, root, name) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        return st.text(min_size=schema.get("minLength", 0), max_size=min(schema.get("maxLength", 24), 24))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        high = max(low, min(schema.get("maxItems", 3), 3))
        return st.lists(values(schema["items"], root), min_size=low, max_size=high)
    if kind == "object":
        return objects(schema, root)
    return json_values()


def objects(schema: dict, root: dict) -> st.SearchStrategy:
    props = schema.get("properties", {})
    required = set(schema.get("required", ())) | (TOKEN_BUDGETS & set(props))  # never an unbounded generation
    return st.fixed_dictionaries({k: values(props[k], root, k) for k in props if k in required},
                                 optional={k: values(props[k], root, k) for k in props if k not in required})


def json_values() -> st.SearchStrategy:
    leaves = st.none() | st.booleans() | st.integers(-(2 ** 40), 2 ** 40) | st.floats(allow_nan=False) | st.text(
        max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5), inner, max_size=3), max_leaves=5)


def wrong_values(name: str) -> st.SearchStrategy:
    if name in TOKEN_BUDGETS:  # wrong, never a long generation (null or absent would mean "as long as possible")
        return st.integers(max_value=0) | st.integers(min_value=10 ** 7) | st.text(max_size=3) | st.booleans() | \
            st.floats(allow_nan=False)
    return json_values() | st.integers(max_value=-(2 ** 64)) | st.floats(min_value=1e300)


def bodies(schema: dict, root: dict) -> st.SearchStrategy:
    """Valid bodies, and valid bodies with one field wrong or missing."""
    schema = resolve(schema, root)
    valid = objects(schema, root)

    @st.composite
    def broken(draw):
        body = draw(valid)
        field = draw(st.sampled_from(sorted(schema["properties"])))
        if field not in TOKEN_BUDGETS and draw(st.booleans()):
            body.pop(field, None)
        else:
            body[field] = draw(wrong_values(field))
        return body

    return st.one_of(valid, valid, broken())


# ---- validating answers against the document -------------------------------------------------

def check(instance: Any, schema: dict, root: dict, where: str = "$") -> list[str]:
    """JSON-schema validation for the keywords pydantic emits; returns the problems found."""
    schema = resolve(schema, root)
    if "anyOf" in schema:
        options = [check(instance, s, root, where) for s in schema["anyOf"]]
        return [] if any(not o for o in options) else [f"{where}: matches no anyOf option: {options}"]
    problems = []
    if "const" in schema and instance != schema["const"]:
        problems.append(f"{where}: {instance!r} != const {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        problems.append(f"{where}: {instance!r} not in {schema['enum']}")
    kind = schema.get("type")
    types = {"string": str, "boolean": bool, "null": type(None), "array": list, "object": dict}
    if kind == "integer":
        ok = isinstance(instance, int) and not isinstance(instance, bool)
    elif kind == "number":
        ok = isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)
    else:
        ok = kind is None or isinstance(instance, types[kind])
    if not ok:
        return problems + [f"{where}: {instance!r} is not of type {kind}"]
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        problems += [f"{where}: missing {k!r}" for k in schema.get("required", ()) if k not in instance]
        for key, item in instance.items():
            if key in props:
                problems += check(item, props[key], root, f"{where}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                problems += check(item, schema["additionalProperties"], root, f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: unexpected {key!r}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            problems += check(item, schema["items"], root, f"{where}[{i}]")
    return problems


def documented(operation: dict, status: int, content_type: str) -> dict:
    responses = operation["responses"]
    response = responses.get(str(status)) or responses.get("default")
    assert response is not None, f"status {status} is not documented"
    media = content_type.split(";")[0].strip()
    assert media in response["content"], f"{media} is not documented for {status}"
    return response["content"][media]


def verify(operation: dict, root: dict, response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    media = documented(operation, response.status_code, response.headers["content-type"])
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [e for e in response.text.split("\n\n") if e]
        assert events and events[-1] == "data: [DONE]", response.text[-300:]
        for event in events[:-1]:
            assert event.startswith("data: "), event
            problems = check(json.loads(event[len("data: "):]), media["itemSchema"], root)
            assert not problems, problems
    elif response.headers["content-type"].startswith("application/json"):
        problems = check(response.json(), media["schema"], root)
        assert not problems, problems


# ---- the run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def document(live_server) -> dict:
    response = httpx.get(live_server.url + "/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    return doc


def test_the_document_describes_every_api_and_the_budget_covers_it(document):
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations == set(BUDGET)
    assert sum(BUDGET.values()) == 150
    schemas = document["components"]["schemas"]
    assert {"ChatCompletionRequest", "CompletionRequest", "HttpGenerateRequest", "ErrorResponse"} <= set(schemas)


@pytest.mark.parametrize("method,path", list(BUDGET), ids=[f"{m} {p}" for m, p in BUDGET])
def test_fuzz_operation(live_server, document, method, path):
    operation = document["paths"][path][method]
    http = httpx.Client(base_url=live_server.url, timeout=60)
    own_origin = {"Origin": live_server.url}
    if method == "get":  # no body: a query string nobody reads keeps the cases distinct
        cases = st.tuples(st.none(), st.booleans(), st.integers(0, 10 ** 9))
    else:
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        cases = st.tuples(bodies(schema, document), st.booleans(), st.just(0))

    @settings(max_examples=BUDGET[(method, path)], derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def run(case):
        body, own, nonce = case
        ran[path] = ran.get(path, 0) + 1
        headers = own_origin if own else {}
        if body is None:  # a path's {model}: one of MODELS (known, aliased, not public, unknown)
            url = path.replace("{model}", MODELS[nonce % len(MODELS)])
            response = http.request(method.upper(), url, params={"nonce": nonce}, headers=headers)
        else:
            response = http.request(method.upper(), path, json=body, headers=headers)
        verify(operation, document, response)

    try:
        run()
    finally:
        http.close()
    assert ran[path] == BUDGET[(method, path)]
    print(f"\nfuzzed {method.upper()} {path}: {ran[path]} cases ({sum(ran.values())} so far)")
