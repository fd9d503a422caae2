"""HTTP errors raised by the framework (404, 405, 413 ...) as one-line JSON, never an HTML page or a trace.

Errors of our own routes are formatted by the routes; this covers what Quart
raises before or around them: unknown paths, wrong methods, bodies over
``MAX_CONTENT_LENGTH`` (the ``max_body_bytes`` setting). ``/v1`` paths get
OpenAI's error object, the others the legacy ``{"ok": false, "traceback"}``.
"""

from __future__ import annotations

import logging

from quart import Quart, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import INTERNAL_ERROR
from ..legacy import schemas as legacy

logger = logging.getLogger(__name__)

LEGACY_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}  # the legacy ``code`` by status


def _body(status: int, message: str) -> dict:
    if request.path.startswith("/v1/") or request.path == "/v1":
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    return legacy.error(message, LEGACY_CODES.get(status, INTERNAL_ERROR if status >= 500 else "bad_request"))


def register(app: Quart) -> None:
    @app.errorhandler(HTTPException)
    async def http_exception(error: HTTPException):
        if request.method == "GET" and error.code == 404 and not request.path.startswith(("/api", "/v1")):
            return error  # the page's own 404 for missing files stays as it is
        message = f"{error.code} {error.name}"
        if error.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message += f": the request body is over the limit of {limit} bytes"
        elif error.code == 405:
            message += f": {request.method} is not allowed on {request.path}"
        response = jsonify(_body(error.code or 500, message))
        response.status_code = error.code or 500
        allowed = getattr(error, "valid_methods", None)
        if error.code == 405 and allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    async def unexpected(error: Exception):
        logger.exception("request failed")
        detail = ""
        if app.config.get("PETALS_CHAT_DEBUG"):
            import traceback

            detail = "\n" + "".join(traceback.format_exception(error))
        response = jsonify(_body(500, f"Internal error: {type(error).__name__}{detail}"))
        response.status_code = 500
        return response
