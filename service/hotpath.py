"""The two hot routes, answered before the framework's routing.

``GET /api/v1/users/{id}/segments`` (backends, thousands of times a second)
and ``POST /api/v1/users/{id}/segments`` (membership changes). Litestar's
per-request machinery (routing, signature model, dependency injection,
guards) costs more than the work itself, so these paths answer the common,
valid form of the two routes straight from the ASGI scope.

Only the routing is this module's own. Everything else is the framework
path's code: the token rule (``service.auth.refusal``), the work and its
response structs (``Store.user_segments``, ``apply_change``), the answers to
failures (``service.errors.answer_for``: domain errors, 503, 500). Whatever
it does not answer goes to the framework unchanged: other forms
(``?expand=true``), ids it does not recognise, malformed or large bodies,
refused tokens (so 400, 401 and 403 are worded in one place).
``tests/test_parity.py`` sends one corpus through both paths and requires
the same answers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from segments_core.rules import parse_user_id
from service.api.users import apply_change
from service.auth import refusal
from service.errors import ErrorAnswer, answer_for
from service.models import ChangeRequest, UserSegments
from service.settings import Settings
from service.store import Store
from service.strict import duplicate_keys, is_json_media_type

MAX_FAST_BODY = 64 * 1024
"""A larger change body is left to the framework (which enforces the 1 MiB limit)."""

_PREFIX = "/api/v1/users/"
_SUFFIX = "/segments"
_encode = msgspec.json.Encoder().encode
_decode_change = msgspec.json.Decoder(ChangeRequest).decode


def _user_id(scope: dict[str, Any]) -> int | None:
    """The user id of a plain ``/api/v1/users/{id}/segments`` request, else None."""
    if scope["query_string"]:
        return None
    path: str = scope["path"]
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    return parse_user_id(path[len(_PREFIX) : -len(_SUFFIX)])


def _header(scope: dict[str, Any], wanted: bytes) -> str:
    for name, value in scope["headers"]:
        if name == wanted:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return ""


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
        if user_id is None:
            return receive
        if self.settings.auth_enabled and (
            refusal(self.settings.tokens, _header(scope, b"authorization"), method) is not None
        ):
            return receive  # the framework's guard words the 401 / 403
        if method == "GET":
            return await self._answer(send, self.store.user_segments(user_id), user_id)
        body, complete = await _read_body(receive)
        if not complete or len(body) > MAX_FAST_BODY:
            # Also a large body that came in one piece: the framework's limit
            # (413 over 1 MiB) applies to every body.
            return _replay(body, not complete, receive)
        if not is_json_media_type(_header(scope, b"content-type")) or duplicate_keys(body):
            return _replay(body, False, receive)  # the framework words the 415 / 400
        try:
            data = _decode_change(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return _replay(body, False, receive)  # the framework words the 400
        return await self._answer(send, apply_change(self.store, user_id, data), None)

    async def _answer(self, send: Any, work: Any, user_id: int | None) -> None:
        try:
            result = await work
        except Exception as exc:  # answered as the framework's handlers answer it
            await _respond_error(send, answer_for(exc))
            return None
        if user_id is not None:  # a lookup: memberships to the response struct
            result = UserSegments(user_id=user_id, segments=[m.slug for m in result])
        await _respond(send, 200, _encode(result), [])
        return None


async def _respond_error(send: Any, answer: ErrorAnswer) -> None:
    extra = [(name.lower().encode(), value.encode()) for name, value in answer.headers.items()]
    await _respond(send, answer.status, _encode(answer.body), extra)


async def _respond(send: Any, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
