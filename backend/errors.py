"""Errors every layer may raise, each with a one-line, client-safe message.

Routes turn them into the wire format of their API (``{"ok": false,
"traceback": ...}`` for the legacy APIs, OpenAI's error object for ``/v1``).
Stable phrases that clients match on are kept here as constants.
"""

from __future__ import annotations

# Phrases the chat page (and third-party clients) match on: keep them verbatim.
MAX_LENGTH_EXCEEDED = "Maximum length exceeded"
CACHE_FULL = "attention cache is full"
BUSY = "Server is busy"


class ApiError(Exception):
    """A request that cannot be served. ``status`` is the HTTP status to use."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line
        self.param = param


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    status = 401
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class UnknownModel(ApiError):
    status = 404
    code = "model_not_found"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


class LengthExceeded(ApiError):
    """The session's token budget is used up (message starts with MAX_LENGTH_EXCEEDED)."""

    status = 400
    code = "context_length_exceeded"


class Busy(ApiError):
    """Too many sessions or generations: retry later (message starts with BUSY)."""

    status = 429
    code = "rate_limit_exceeded"


class NotReady(ApiError):
    status = 503
    code = "model_not_ready"


class SwarmError(ApiError):
    """The swarm failed to serve a step (a genuine upstream failure)."""

    status = 503
    code = "swarm_error"
