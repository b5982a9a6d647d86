"""The domain's exceptions, and the one mapping of failures to HTTP answers.

Both paths of a request, the framework's handlers (``service.app``) and the
hot path (``service.hotpath``), answer a failure with :func:`answer_for`, so
an error has one status, body and set of headers whichever path met it.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from redis.exceptions import RedisClusterException, RedisError

from segments_core import unavailable

log = logging.getLogger("segments.api")


class DomainError(Exception):
    """Base of every error the domain reports to a client."""

    status_code = 400

    def __init__(self, detail: str, extra: dict[str, object] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


def error_body(exc: DomainError) -> dict[str, object]:
    """The JSON body of an error answer: the same shape as Litestar's own."""
    body: dict[str, object] = {"status_code": exc.status_code, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return body


class SegmentExists(DomainError):
    status_code = 409


class SegmentNotFound(DomainError):
    status_code = 404


class UnknownSegments(DomainError):
    status_code = 404

    def __init__(self, slugs: list[str]) -> None:
        super().__init__(f"unknown segment(s): {', '.join(slugs)}", {"unknown": slugs})
        self.slugs = slugs


class InvalidRequest(DomainError):
    status_code = 400


class ScriptArgumentError(DomainError):
    """A Lua script refused its arguments (BADARG); nothing was changed.

    The edge validates everything first, so reaching this is a bug of ours,
    but it is still the client's request that cannot be applied: 400.
    """

    status_code = 400


class ErrorAnswer(NamedTuple):
    status: int
    body: dict[str, object]
    headers: dict[str, str]


UNAVAILABLE = ErrorAnswer(
    503,
    {"status_code": 503, "detail": unavailable.DETAIL},
    {"Retry-After": str(unavailable.RETRY_AFTER_S)},
)
"""Redis cannot answer right now (``segments_core.unavailable``)."""

INTERNAL = ErrorAnswer(500, {"status_code": 500, "detail": "Internal Server Error"}, {})
"""A bug: the body Litestar gives an unhandled exception."""


ANSWERED: tuple[type[Exception], ...] = (DomainError, RedisError, RedisClusterException)
"""What both paths answer with :func:`answer_for` (the framework's exception
handlers are registered for exactly these); anything else is a 500."""


def answer_for(exc: BaseException) -> ErrorAnswer:
    """The HTTP answer to a failure: the domain's own error, 503 when Redis
    cannot answer now, else 500. Logged when it is a 5xx (a 500 with its
    traceback)."""
    if isinstance(exc, DomainError):
        return ErrorAnswer(exc.status_code, error_body(exc), {})
    if isinstance(exc, ANSWERED) and unavailable.is_unavailable(exc):
        log.warning("Redis unavailable: %s", exc)
        return UNAVAILABLE
    log.error("internal error: %s", exc, exc_info=exc)
    return INTERNAL
