"""The two hot routes, answered before the framework's routing.

``GET /api/v1/users/{id}/segments`` (backends, thousands of times a second)
and ``POST /api/v1/users/{id}/segments`` (membership changes). Litestar's
per-request machinery (routing, signature model, dependency injection,
guards) costs more than the work itself, so these paths answer the common,
valid form of the two routes straight from the ASGI scope. They run the
same code as the documented handlers in ``service.api.users``
(``Store.user_segments``, ``apply_change``, the same response structs and
error bodies), and hand everything else to the framework: other forms
(``?expand=true``), malformed ids or bodies, missing or bad tokens. So the
contract's rules and error answers have one implementation.
"""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.api.users import apply_change
from service.errors import DomainError, error_body
from service.models import MAX_USER_ID, ChangeRequest, UserSegments
from service.settings import Settings
from service.store import Store

MAX_FAST_BODY = 64 * 1024
"""A larger change body is left to the framework (which enforces the 1 MiB limit)."""

_PREFIX = "/api/v1/users/"
_SUFFIX = "/segments"
_UNAVAILABLE = b'{"status_code":503,"detail":"storage unavailable, retry shortly"}'
_encode = msgspec.json.Encoder().encode
_decode_change = msgspec.json.Decoder(ChangeRequest).decode


def _user_id(scope: dict[str, Any]) -> int | None:
    """The user id of a plain ``/api/v1/users/{id}/segments`` request, else None."""
    if scope["query_string"]:
        return None
    path: str = scope["path"]
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    text = path[len(_PREFIX) : -len(_SUFFIX)]
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit() and text[0] != "0"):
        return None
    user_id = int(text)
    return user_id if user_id <= MAX_USER_ID else None


def _authorized(scope: dict[str, Any], settings: Settings, *, write: bool) -> bool:
    if not settings.auth_enabled:
        return True
    allowed = settings.write_tokens if write else settings.read_tokens
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and any(
                hmac.compare_digest(token.encode(), t.encode()) for t in allowed
            )
    return False


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    """The body read so far, and whether that is all of it (at most MAX_FAST_BODY)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if not more or size > MAX_FAST_BODY:
            return b"".join(chunks), not more


def _replay(body: bytes, more: bool, receive: Any) -> Any:
    """A receive callable that hands the framework the body read so far first."""
    sent = False

    async def replayed() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


class HotPath:
    """Answers the hot routes; ``handle`` returns a receive for the framework
    when it did not answer (None when it did)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        method = scope["method"]
        if method not in ("GET", "POST"):
            return receive
        user_id = _user_id(scope)
        write = method == "POST"
        if user_id is None or not _authorized(scope, self.settings, write=write):
            return receive
        if not write:
            return await self._answer(send, self.store.user_segments(user_id), user_id)
        body, complete = await _read_body(receive)
        if not complete:
            return _replay(body, True, receive)
        try:
            data = _decode_change(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return _replay(body, False, receive)  # the framework words the 400
        return await self._answer(send, apply_change(self.store, user_id, data), None)

    async def _answer(self, send: Any, work: Any, user_id: int | None) -> None:
        try:
            result = await work
        except DomainError as exc:
            await _respond(send, exc.status_code, _encode(error_body(exc)), [])
            return None
        except (RedisConnectionError, RedisTimeoutError):
            await _respond(send, 503, _UNAVAILABLE, [(b"retry-after", b"1")])
            return None
        if user_id is not None:  # a lookup: memberships to the response struct
            result = UserSegments(user_id=user_id, segments=[m.slug for m in result])
        await _respond(send, 200, _encode(result), [])
        return None


async def _respond(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
