"""The lookup hot path, answered before the framework's routing.

``GET /api/v1/users/{id}/segments`` is what backends call thousands of times
a second. Litestar's per-request machinery (routing, signature model,
dependency injection, guards) costs more than the lookup itself, so this
path answers the plain form of that one route straight from the ASGI
scope. It calls the same ``Store.user_segments`` and encodes the same
``UserSegments`` struct as the documented handler in ``service.api.users``,
which still serves every other form (``?expand=true``, malformed ids,
missing or bad tokens), so the contract has one implementation of its
rules and errors.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.models import MAX_USER_ID, UserSegments
from service.settings import Settings
from service.store import Store

_PREFIX = "/api/v1/users/"
_SUFFIX = "/segments"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_UNAVAILABLE = b'{"status_code":503,"detail":"storage unavailable, retry shortly"}'
_encode = msgspec.json.Encoder().encode


def _user_id(scope: dict[str, Any]) -> int | None:
    """The user id of a plain lookup request, else None (the framework decides)."""
    if scope["method"] != "GET" or scope["query_string"]:
        return None
    path: str = scope["path"]
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    text = path[len(_PREFIX) : -len(_SUFFIX)]
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit() and text[0] != "0"):
        return None
    user_id = int(text)
    return user_id if user_id <= MAX_USER_ID else None


def _authorized(scope: dict[str, Any], settings: Settings) -> bool:
    if not settings.auth_enabled:
        return True
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and any(
                hmac.compare_digest(token.encode(), t.encode()) for t in settings.read_tokens
            )
    return False


async def answer(scope: dict[str, Any], send: Any, store: Store, settings: Settings) -> bool:
    """Answers a plain lookup; False when the request is not one (or not allowed)."""
    user_id = _user_id(scope)
    if user_id is None or not _authorized(scope, settings):
        return False
    try:
        memberships = await store.user_segments(user_id)
    except (RedisConnectionError, RedisTimeoutError):
        await _respond(send, 503, _UNAVAILABLE, [(b"retry-after", b"1")])
        return True
    body = _encode(UserSegments(user_id=user_id, segments=[m.slug for m in memberships]))
    await _respond(send, 200, body, [])
    return True


async def _respond(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
