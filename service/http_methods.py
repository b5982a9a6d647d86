"""Two HTTP method rules Litestar leaves out, kept at the edge of the app.

- ``HEAD`` (RFC 9110 §9.3.2): every GET route answers it as it answers GET,
  the same status and headers, without the body. Litestar answers 405, so
  :func:`head_as_get` hands the app a GET and drops the body it answers.
- ``Allow``: Litestar's automatic ``OPTIONS`` answer of a path whose handlers
  are registered in several steps lists only the methods of the first step
  (``OPTIONS, POST`` for ``/api/v1/segments``, which has GET too), because
  its handler keeps the route object of that step. :func:`exact_allow`, a
  ``before_send`` hook, writes the ``Allow`` of every ``OPTIONS`` answer
  from the app's final routes, and adds ``HEAD`` wherever ``GET`` is (also
  to a 405's ``Allow``), so it names exactly what the path accepts.
"""

from __future__ import annotations

from typing import Any

from litestar.routes import HTTPRoute


def head_as_get(scope: dict[str, Any], send: Any) -> tuple[dict[str, Any], Any]:
    """A HEAD request as the GET it stands for, and a ``send`` without the body."""

    async def headers_only(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # a streamed body: its last message ends the answer
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return {**scope, "method": "GET"}, headers_only


def _with_head(methods: set[str]) -> str:
    if "GET" in methods:
        methods = {*methods, "HEAD"}
    return ", ".join(sorted(methods))


def _route_methods(app: Any, paths: set[str]) -> set[str] | None:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path in paths:
            return set(route.methods)
    return None


async def exact_allow(message: Any, scope: Any) -> None:
    """``before_send`` hook: the ``Allow`` of OPTIONS and 405 answers made exact."""
    if message["type"] != "http.response.start":
        return
    headers = list(message.get("headers") or [])
    at = next((i for i, (name, _) in enumerate(headers) if name.lower() == b"allow"), None)
    if at is None:
        return
    methods: set[str] | None = None
    handler = scope.get("route_handler")
    if scope.get("method") == "OPTIONS" and message["status"] == 204 and handler is not None:
        methods = _route_methods(scope["app"], set(handler.paths))
    if methods is None:
        methods = {m.strip() for m in headers[at][1].decode("latin-1").split(",") if m.strip()}
    headers[at] = (b"allow", _with_head(methods).encode("latin-1"))
    message["headers"] = headers
