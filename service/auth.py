"""Optional bearer tokens with read and write scopes (SEGMENTS_TOKENS).

With no tokens configured every request is allowed: the service then sits
behind a network boundary of its operator's choosing. :func:`refusal` is the
one rule, asked by the framework's guard and by the hot path.
"""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler

from service.settings import Settings, Tokens

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods a read token may use; every other method needs a write token."""


def _matches(token: str, allowed: frozenset[str]) -> bool:
    # Constant-time comparison against each token, so timing reveals nothing.
    return any(hmac.compare_digest(token.encode(), t.encode()) for t in allowed)


def refusal(tokens: Tokens, authorization: str, method: str) -> HTTPException | None:
    """Why a request with this ``Authorization`` header may not use ``method``
    (401 no bearer token, 403 unknown or read-only token); None: allowed."""
    if not tokens:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return NotAuthorizedException("a bearer token is required")
    write = method not in SAFE_METHODS
    if _matches(token, tokens.write if write else tokens.read):
        return None
    return PermissionDeniedException(
        "this token may not write" if write and _matches(token, tokens.read) else "unknown token"
    )


async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: reads need a read (or write) token, everything else a write token.

    Operations endpoints, the API schema and signed report links (which carry
    their own signature) are marked ``opt={"public": True}`` and pass. A POST
    that only reads (the batch lookup, which takes its ids in a body) is
    marked ``opt={"reads": True}`` and needs the read scope only (SPEC §6).
    """
    settings: Settings = connection.app.state.settings
    if handler.opt.get("public") or connection.scope["path"].startswith("/schema"):
        return
    method = "GET" if handler.opt.get("reads") else connection.scope["method"]
    refused = refusal(settings.tokens, connection.headers.get("authorization", ""), method)
    if refused is not None:
        raise refused
