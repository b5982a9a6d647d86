"""What the API does around every HTTP request: its id, its metrics, its 500s.

:class:`Observer` wraps the whole app, hot path and framework alike
(``service.app.SegmentsApp``):

- **Request id**: the client's ``X-Request-ID`` when it is acceptable (at
  most 128 characters from ``A-Za-z0-9._:@/+=-``), else a new one. It is the
  current request of ``segments_core.logging`` for the whole request, so
  every log line written meanwhile carries it, whoever writes it; and it is
  added to the response's headers, whatever answered.
- **Metrics**: one record per request (``service.metrics.REQUESTS``) under
  the route's template: ``scope["path_template"]`` after Litestar's routing,
  ``HOT_ROUTE`` for the hot path, ``unmatched`` when no route matched.
- **500s**: a 5xx other than 503 about which no error line was written is
  logged here, with the traceback Litestar's ``after_exception`` hook kept
  (:func:`remember_exception`) and the request id. Whoever logged it first
  (``service.errors.answer_for`` does) is not repeated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from segments_core.logging import REQUEST, RequestLog, accept_request_id, new_request_id
from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service import metrics

HEADER = b"x-request-id"
_EXCEPTION = "segments.exception"
"""Scope key under which the exception of a failed request is kept."""

log = logging.getLogger("segments.api")

Answer = Callable[[Any, Any, Any], Awaitable[str]]
"""Answers a request (scope, receive, send); returns the route's template."""


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's acceptable ``X-Request-ID``, else a new id."""
    for name, value in headers:
        if name == HEADER:
            return accept_request_id(value) or new_request_id()
    return new_request_id()


async def remember_exception(exc: Exception, scope: Any) -> None:
    """Litestar's ``after_exception`` hook: keeps the exception for the 500's
    line, and counts a Redis failure that no script call counted."""
    scope[_EXCEPTION] = exc
    if isinstance(exc, REDIS_CLIENT_ERRORS):
        metrics.redis_error(exc)


class Observer:
    """Runs a request with its id, then records it (and logs it when it is a 500)."""

    async def __call__(self, answer: Answer, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        current = RequestLog(request_id(scope["headers"]))
        REQUEST.set(current)  # each request runs in a task of its own: nothing to reset
        id_header = (HEADER, current.id.encode())
        status = 500  # what the client gets when nothing was sent

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        route = metrics.UNMATCHED
        try:
            route = await answer(scope, receive, send_with_id)
        except BaseException:
            # Past the framework: uvicorn logs it, with this request's id (still set).
            route = scope.get("path_template") or route
            raise
        finally:
            metrics.REQUESTS.request(scope["method"], route, status, time.perf_counter() - started)
        if status >= 500 and status != 503 and current.errors == 0:
            exc = scope.get(_EXCEPTION)
            log.error(
                "%s %s answered %d",
                scope["method"],
                route,
                status,
                exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
            )
