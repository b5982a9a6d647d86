"""Optional bearer tokens with read and write scopes (SEGMENTS_TOKENS).

With no tokens configured every request is allowed: the service then sits
behind a network boundary of its operator's choosing.
"""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from service.settings import Settings

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _matches(token: str, allowed: frozenset[str]) -> bool:
    # Constant-time comparison against each token, so timing reveals nothing.
    return any(hmac.compare_digest(token.encode(), t.encode()) for t in allowed)


async def require_token(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: reads need a read (or write) token, everything else a write token.

    Operations endpoints, the API schema and signed report links (which carry
    their own signature) are marked ``opt={"public": True}`` and pass.
    """
    settings: Settings = connection.app.state.settings
    if not settings.auth_enabled or handler.opt.get("public"):
        return
    if connection.scope["path"].startswith("/schema"):
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise NotAuthorizedException("a bearer token is required")
    write = connection.scope["method"] not in _SAFE_METHODS
    if not _matches(token, settings.write_tokens if write else settings.read_tokens):
        raise PermissionDeniedException(
            "this token may not write" if write and _matches(token, settings.read_tokens)
            else "unknown token"
        )
