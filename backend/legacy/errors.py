"""The legacy APIs' errors in one place: ``{"ok": false, "traceback": ONE_LINE, "code": CODE}``.

``code`` is the error's stable :attr:`~backend.errors.ApiError.legacy_code` (the
README lists them); ``traceback`` keeps the original's field name and one line
of text, with the Python traceback appended only when the ``debug`` setting is on.
The HTTP API registers :func:`register` on its blueprint, so its routes raise and
never format; the WebSocket API and the HTTP stream send :func:`frame` themselves
(a reply inside an open connection or stream, not a response).
"""

from __future__ import annotations

import logging
import traceback

from quart import Blueprint, Response, jsonify

from ..errors import INTERNAL_ERROR, ApiError
from ..routes.common import state
from . import schemas

logger = logging.getLogger(__name__)


def _debug_suffix(error: BaseException, debug: bool) -> str:
    return "\n" + "".join(traceback.format_exception(error)).rstrip("\n") if debug else ""


def frame(error: ApiError, *, debug: bool) -> dict:
    """The error reply for ``error`` (``debug``: the settings' flag, with the Python traceback appended)."""
    return schemas.error(error.message + _debug_suffix(error, debug), error.legacy_code)


def internal_frame(error: Exception, *, debug: bool) -> dict:
    """The error reply for a bug: logged with its stack, told to the client in one line."""
    logger.error("legacy API request failed", exc_info=error)
    return schemas.error(f"Internal error: {type(error).__name__}" + _debug_suffix(error, debug), INTERNAL_ERROR)


def response(error: ApiError) -> Response:
    reply = jsonify(frame(error, debug=state().settings.debug))
    reply.status_code = error.status
    return reply


def register(blueprint: Blueprint) -> None:
    """Every :class:`ApiError` a route of ``blueprint`` raises becomes the legacy error response."""
    blueprint.register_error_handler(ApiError, _handle)


async def _handle(error: ApiError) -> Response:
    return response(error)
