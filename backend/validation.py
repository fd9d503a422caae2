"""Request validation shared by every API: a pydantic model's first error as one line that names the field."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import BadRequest

R = TypeVar("R", bound=BaseModel)


def parse(model: type[R], data: Any) -> R:
    """Validate ``data``; raise BadRequest with one line naming the first bad field."""
    if not isinstance(data, dict):
        raise BadRequest("request must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = first["loc"]  # e.g. ("do_sample", "bool") for a union member: name the field only
        field = (str(loc[0]) + "".join(f"[{p}]" for p in loc[1:] if isinstance(p, int))) if loc else "request"
        kind = first["type"]
        if kind == "missing":
            message = f"'{field}' is required"
        elif kind == "literal_error" and field == "type":
            message = f"'type' must be {first['ctx']['expected']}, got {first.get('input')!r}"
        else:
            message = f"invalid '{field}': {first['msg']}"
        raise BadRequest(message, param=field) from None
