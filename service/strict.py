"""Strict JSON bodies: a JSON value of the wrong type is a 400.

Litestar converts request bodies in msgspec's lax mode, where ``"10"`` is
accepted for a number. The contract says a wrong type is a client error, so
before a handler runs, its body is decoded once more in strict mode against
the handler's own ``data`` type: one rule for every endpoint, kept beside
the models instead of in each handler.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException


async def strict_body(request: Request[Any, Any, Any]) -> None:
    data = request.route_handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return
    try:
        msgspec.json.decode(await request.body(), type=data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(f"invalid request body: {exc}") from None
    except msgspec.DecodeError:
        return  # malformed JSON: Litestar's own decoding answers it
