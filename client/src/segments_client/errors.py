"""Typed errors: one class per kind of answer, with the status and the service's message."""

from __future__ import annotations

from typing import Any


class SegmentsError(Exception):
    """Base of every error of this client.

    ``status`` is the HTTP status (None when no answer came: connection
    refused, timed out); ``message`` is the service's ``detail``; ``extra``
    names the culprits where the service does (``{"unknown": [...]}``).
    """

    def __init__(
        self, message: str, status: int | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {message}" if status is not None else message)
        self.message = message
        self.status = status
        self.extra = extra or {}


class BadRequest(SegmentsError):
    """400 (or 422): a malformed id, slug, percent, ttl or body."""


class Unauthorized(SegmentsError):
    """401: a token is required."""


class Forbidden(SegmentsError):
    """403: the token may not do this (a read token writing), or a bad report link."""


class NotFound(SegmentsError):
    """404: no such segment; ``unknown`` lists the slugs a change named that do not exist."""

    @property
    def unknown(self) -> list[str]:
        value = self.extra.get("unknown", [])
        return list(value) if isinstance(value, list) else []


class Conflict(SegmentsError):
    """409: the slug exists."""


class PayloadTooLarge(SegmentsError):
    """413: the body is over 1 MiB."""


class Unavailable(SegmentsError):
    """503, or no answer at all, still so when the call's time ran out.

    ``retry_after`` is the service's Retry-After in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status, extra)
        self.retry_after = retry_after


class ServerError(SegmentsError):
    """Any other 5xx: a bug of the service (it logs it with the request id)."""


_BY_STATUS: dict[int, type[SegmentsError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: BadRequest,
}


def error_for(status: int, body: Any, retry_after: float | None = None) -> SegmentsError:
    """The exception for an error answer of ``status`` with its decoded JSON ``body``."""
    message, extra = f"HTTP {status}", None
    if isinstance(body, dict):
        message = str(body.get("detail") or message)
        extra = body.get("extra") if isinstance(body.get("extra"), dict) else None
    if status == 503:
        return Unavailable(message, status, extra, retry_after)
    if status >= 500:
        return ServerError(message, status, extra)
    return _BY_STATUS.get(status, SegmentsError)(message, status, extra)
