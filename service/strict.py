"""Strict JSON bodies, one rule for every endpoint that takes one.

Before a handler with a body runs (``strict_body``, a ``before_request``
hook; the hot path asks the same functions and leaves what they refuse to
the framework):

- the body must be declared JSON (``Content-Type: application/json``, or a
  ``+json`` type): anything else is a 415, even if it parses as JSON;
- no object in it may name a key twice (a JSON parser keeps the last one
  silently, so ``{"percent": 1, "percent": 100}`` would mean 100): a 400;
- it is decoded once more in msgspec's strict mode against the handler's
  own ``data`` type: Litestar converts bodies in lax mode, where ``"10"`` is
  taken for a number, and a wrong type is a client error (400). A whole
  number written with a fraction or an exponent (``5.0``, ``5e0``) is the
  integer it equals, as JSON Schema says, when a float holds it exactly
  (up to 2^53); a larger one is a 400, since the number the client meant
  could be another (``9007199254740993.0`` reads as ...992).
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, InternalServerException, ValidationException


class UnsupportedMediaType(HTTPException):
    status_code = 415


class ClientGone(HTTPException):
    """The client closed the connection (or was cut off by a read timeout,
    ``service.slow_clients``) before its body was complete: no one hears the
    answer, and it is no server error (Litestar calls it a 500)."""

    status_code = 400


def is_json_media_type(content_type: str) -> bool:
    """Whether a Content-Type header value declares JSON (parameters allowed)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class _Duplicate(Exception):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> None:
    if len({key for key, _ in pairs}) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        raise _Duplicate(sorted(key for key, n in counts.items() if n > 1))


def duplicate_keys(body: bytes) -> list[str]:
    """Keys some object of the JSON body names twice ([] for none, or no JSON)."""
    try:
        json.loads(body, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as found:
        return list(found.args[0])
    except ValueError:
        pass  # not JSON: msgspec words that 400
    return []


EXACT_INTEGERS = 2**53
"""Every whole number up to this is held exactly by a float."""


def _whole(text: str) -> int | float:
    value = Decimal(text)
    if value == value.to_integral_value() and abs(value) <= EXACT_INTEGERS:
        return int(value)
    return float(text)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _with_whole_numbers(body: bytes) -> bytes | None:
    """The body with each whole number written as a float (``5.0``) written as
    an integer; None when there is none (or the body is no JSON)."""
    if b"." not in body and b"e" not in body and b"E" not in body:
        return None
    try:
        value = json.loads(body, parse_float=_whole, parse_constant=_refuse_constant)
    except ValueError:
        return None
    rewritten = msgspec.json.encode(value)
    return None if rewritten == body else rewritten


def _decodes(body: bytes, annotation: Any) -> bool:
    try:
        msgspec.json.decode(body, type=annotation, strict=True)
    except msgspec.ValidationError:
        return False
    return True


async def strict_body(request: Request[Any, Any, Any]) -> None:
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    if not is_json_media_type(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("the body must be JSON, sent as Content-Type: application/json")
    try:
        body = await request.body()
    except InternalServerException:  # what Request.body raises when the client is gone
        raise ClientGone("the client left before its body was complete") from None
    twice = duplicate_keys(body)
    if twice:
        raise ValidationException(f"invalid request body: key(s) given twice: {', '.join(twice)}")
    try:
        msgspec.json.decode(body, type=data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        whole = _with_whole_numbers(body)
        if whole is None or not _decodes(whole, data.annotation):
            raise ValidationException(f"invalid request body: {exc}") from None
    except msgspec.DecodeError:
        return  # malformed JSON: Litestar's own decoding answers it
