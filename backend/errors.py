"""Errors every layer may raise, each with a one-line, client-safe message.

Routes turn them into the wire format of their API (``{"ok": false,
"traceback": ..., "code": legacy_code}`` for the legacy APIs, OpenAI's error
object with ``code`` for ``/v1``). ``legacy_code`` is what legacy clients switch
on (the README's API section lists the codes); the phrases older clients match
in the text are kept here as constants.
"""

from __future__ import annotations

# Phrases the chat page (and third-party clients) match on: keep them verbatim.
MAX_LENGTH_EXCEEDED = "Maximum length exceeded"
CACHE_FULL = "attention cache is full"
BUSY = "Server is busy"

INTERNAL_ERROR = "internal_error"  # the legacy ``code`` of a failure that is a bug (no ApiError)


class ApiError(Exception):
    """A request that cannot be served. ``status`` is the HTTP status to use."""

    status = 400
    code = "invalid_request"  # OpenAI's error code
    legacy_code = "bad_request"  # the legacy APIs' ``code`` field
    closes_session = False  # True: a socket's inference session is closed when this error ends a generation

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.message = " ".join(str(message).split())  # always one line
        self.param = param


class BadRequest(ApiError):
    status = 400
    code = "invalid_request"


class SamplingFailed(BadRequest):
    """The request's sampling parameters made generation fail numerically (inf/nan probabilities): the
    client's mistake, never a swarm failure. The session is closed (its state is unknown)."""

    closes_session = True


class Unauthorized(ApiError):
    status = 401
    code = "invalid_api_key"
    legacy_code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    legacy_code = "forbidden"


class UnknownModel(ApiError):
    status = 404
    code = "model_not_found"
    legacy_code = "unknown_model"


class TooLarge(ApiError):
    status = 413
    code = "too_large"
    legacy_code = "too_large"


class LengthExceeded(ApiError):
    """The session's token budget is used up (message starts with MAX_LENGTH_EXCEEDED)."""

    status = 400
    code = "context_length_exceeded"
    legacy_code = "max_length_exceeded"


class Busy(ApiError):
    """Too many sessions or generations: retry later (message starts with BUSY)."""

    status = 429
    code = "rate_limit_exceeded"
    legacy_code = "busy"


class NotReady(ApiError):
    """The model is loading, or failed to load and is being retried (or the app is still starting)."""

    status = 503
    code = "model_not_ready"
    legacy_code = "not_ready"


class SwarmError(ApiError):
    """The swarm failed to serve a step (a genuine upstream failure)."""

    status = 503
    code = "swarm_error"
    legacy_code = "swarm_error"
    closes_session = True  # over the socket: the session's state is unknown, it is closed


class CacheFull(SwarmError):
    """The swarm is out of capacity: no server has attention cache left (message contains CACHE_FULL)."""

    legacy_code = "cache_full"


class SessionExpired(ApiError):
    """A ``reattach`` with a resume token that is unknown or whose reattach window has passed."""

    status = 404
    code = "session_expired"
    legacy_code = "session_expired"
