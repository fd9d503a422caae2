"""Optional API keys for the programmatic APIs (``/v1/*`` and ``POST /api/v1/generate``).

With the ``api_keys`` setting empty, everything is open (as the original public
API). Otherwise a request needs ``Authorization: Bearer KEY`` with one of the
keys, compared in constant time. Requests from the app's own page are exempt
(:func:`.common.is_own_origin`: ``Origin`` is ``scheme://Host`` and ``Host`` a trusted name, never the pair
alone, which DNS rebinding lets any page produce), so the web page keeps working without a key. A
non-browser client can forge both headers, so the keys keep other web pages away rather than a determined
scripted client.
"""

from __future__ import annotations

import hmac

from ..errors import Unauthorized
from .common import is_own_origin, state


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time: every key is compared, whatever matched before."""
    given = token.encode("utf-8")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode("utf-8"))
    return found


def require_api_key(conn) -> None:
    """Raise :class:`Unauthorized` unless ``conn`` may use the APIs (a request or a websocket)."""
    keys = state().settings.api_keys
    if not keys or is_own_origin(conn):
        return
    scheme, _, token = conn.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Missing API key: send the header 'Authorization: Bearer YOUR_KEY'")
    if not key_matches(token, keys):
        raise Unauthorized("Invalid API key")
