"""Slow or stuck clients cannot hold a worker (SPEC §6): uvicorn's httptools
protocol with the three bounds it lacks.

uvicorn closes a keep-alive connection idle between requests
(``timeout_keep_alive``), but nothing bounds the request itself: a client
that connects and sends half a header block, or a body shorter than its
Content-Length, holds the connection for as long as it likes, and a header
block of any size is buffered. ``BoundedHttpProtocol`` (``segments serve``
runs uvicorn with it) adds:

- a header block larger than ``MAX_HEADER_BYTES``: 431, connection closed;
- headers not complete within ``SEGMENTS_HEADER_TIMEOUT`` seconds of the
  connection or of the request's first byte: 408, connection closed;
- a body not complete within ``SEGMENTS_BODY_TIMEOUT`` seconds of its
  headers: connection closed (the application, waiting for the body, sees
  the client gone).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024
"""A request line and headers larger than this are refused (431): far above
any real request (a long bearer token is a few kB), far below what would
cost memory."""

log = logging.getLogger("segments.api")


@functools.cache
def _timeouts() -> tuple[float, float]:
    """(header, body) read timeouts, from the settings; read once per process
    (uvicorn builds a protocol per connection, in each worker process)."""
    from service.settings import load

    settings = load()
    return settings.header_timeout_s, settings.body_timeout_s


def _answer(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return b"".join(
        [
            f"HTTP/1.1 {status} {reason}\r\n".encode(),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"connection: close\r\n",
            f"content-length: {len(body)}\r\n\r\n".encode(),
            body,
        ]
    )


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with bounded header size and read times."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout_s, self._body_timeout_s = _timeouts()
        self._reading_headers = True
        self._header_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None

    # -- the deadline of what is being read ------------------------------------

    def _arm(self, seconds: float, on_expiry: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self._reading_headers and not self.transport.is_closing():
            log.info("closing a connection: headers not complete in %s s", self._header_timeout_s)
            self._refuse(408, "Request Timeout", "request headers took too long")

    def _body_too_slow(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            log.info("closing a connection: body not complete in %s s", self._body_timeout_s)
            self.transport.close()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.transport.write(_answer(status, reason, message))
        self.transport.close()

    # -- uvicorn's protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout_s, self._headers_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._reading_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Judged after parsing: this chunk may have completed the headers
        # (and carried body bytes too).
        too_large = self._reading_headers and self._header_bytes > MAX_HEADER_BYTES
        if too_large and not self.transport.is_closing():
            self._refuse(431, "Request Header Fields Too Large", "request headers too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        if self._deadline is None:
            self._arm(self._header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        self._arm(self._body_timeout_s, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()
