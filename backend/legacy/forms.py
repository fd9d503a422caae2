"""Read request parameters the way the original HTTP API did: form fields, query string, or JSON."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel
from quart import Request, current_app

from ..errors import BadRequest, TooLarge
from ..routes import json_body

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _kinds(model: type[BaseModel]) -> dict[str, set[type]]:
    kinds: dict[str, set[type]] = {}
    for name, field in model.model_fields.items():
        found: set[type] = set()
        stack = [field.annotation]
        while stack:
            t = stack.pop()
            args = typing.get_args(t)
            if args and typing.get_origin(t) is not typing.Literal:
                stack.extend(args)
            elif typing.get_origin(t) is typing.Literal:
                found.add(int)
            elif isinstance(t, type):
                found.add(t)
        kinds[name] = found
    return kinds


def coerce_strings(model: type[BaseModel], data: dict[str, str]) -> dict[str, Any]:
    """Turn form/query strings into the types ``model`` expects (JSON bodies are left as they are)."""
    kinds = _kinds(model)
    out: dict[str, Any] = {}
    for name, raw in data.items():
        allowed = kinds.get(name)
        if not allowed or not isinstance(raw, str) or str in allowed:
            out[name] = raw
            continue
        text = raw.strip().lower()
        try:
            if bool in allowed and text in _TRUE | _FALSE:
                out[name] = text in _TRUE
            elif int in allowed and float not in allowed:
                out[name] = int(text)
            elif float in allowed:
                out[name] = float(text)
            else:
                out[name] = raw
        except ValueError:
            expected = "an integer" if float not in allowed else "a number"
            raise BadRequest(f"invalid '{name}': must be {expected}, got {raw!r}", param=name) from None
    return out


async def read_params(request: Request, model: type[BaseModel]) -> dict[str, Any]:
    """Merge query string, form fields and a JSON body (JSON wins) into typed values.

    The body limit is the app's ``MAX_CONTENT_LENGTH`` (the ``max_body_bytes`` setting).
    """
    max_bytes = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"request body is too large ({request.content_length} bytes, limit {max_bytes})")
    values: dict[str, Any] = coerce_strings(model, dict(request.args))
    if request.mimetype == "application/json":
        body = await request.get_data(as_text=False)
        data = json_body.decode(body, subject="body") if body.strip() else {}
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        values.update(data)
    else:
        form = await request.form
        values.update(coerce_strings(model, dict(form)))
    return values
