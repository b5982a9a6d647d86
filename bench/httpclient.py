"""A small asyncio HTTP/1.1 keep-alive client for seeding and probes.

The bench's own requests (seeding, probes during the percent rollout, the
CSV download) must cost little CPU next to the server on a 2-core box;
a plain keep-alive connection over asyncio streams does, and needs no
dependency. It speaks just enough HTTP/1.1 for this service: Content-Length
and chunked bodies, ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import msgspec

READ_LIMIT = 1 << 20
"""StreamReader buffer limit: long header lines, large chunks."""
REQUEST_TIMEOUT_S = 120.0
"""Longest wait for one whole response (a 10% rollout over 1M users answers in
seconds; a hung server must not hang the bench)."""


class HttpError(RuntimeError):
    """The server closed the connection or answered something unreadable."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return msgspec.json.decode(self.body)


@dataclass(frozen=True, slots=True)
class Target:
    """Where the service listens, parsed from ``http://host:port``."""

    host: str
    port: int
    base_path: str = ""

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80, parts.path.rstrip("/"))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.base_path}"


class Connection:
    """One keep-alive connection; reopens itself after the server closes it."""

    def __init__(self, target: Target, token: str | None = None) -> None:
        self.target = target
        self._auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(
                self.target.host, self.target.port, limit=READ_LIMIT
            )
        return self._reader, self._writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _head(self, method: str, path: str, body: bytes | None) -> bytes:
        lines = (
            f"{method} {self.target.base_path}{path} HTTP/1.1\r\n"
            f"Host: {self.target.host}:{self.target.port}\r\n{self._auth}"
        )
        if body is not None:
            lines += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (lines + "\r\n").encode("latin-1")

    async def _send(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], asyncio.StreamReader]:
        reader, writer = await self._open()
        writer.write(self._head(method, path, body) + (body or b""))
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            await self.close()
            raise HttpError("connection closed before a response")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {status_line!r}")
        headers: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers, reader

    async def _chunks(
        self, headers: dict[str, str], reader: asyncio.StreamReader
    ) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left > 0:
                chunk = await reader.read(min(left, 1 << 16))
                if not chunk:
                    raise HttpError("connection closed inside a body")
                left -= len(chunk)
                yield chunk
        else:
            while chunk := await reader.read(1 << 16):
                yield chunk
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        """Send one request and read the whole response (at most REQUEST_TIMEOUT_S)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                try:
                    status, headers, reader = await self._send(method, path, body)
                except (ConnectionError, asyncio.IncompleteReadError):
                    await self.close()
                    status, headers, reader = await self._send(method, path, body)
                data = b"".join([c async for c in self._chunks(headers, reader)])
        except TimeoutError:
            await self.close()
            raise HttpError(
                f"{method} {path}: no response within {REQUEST_TIMEOUT_S:g} s"
            ) from None
        return Response(status, headers, data)

    async def json(self, method: str, path: str, payload: object | None = None) -> Response:
        body = None if payload is None else msgspec.json.encode(payload)
        return await self.request(method, path, body)

    async def stream(self, path: str) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        """GET ``path``; the body comes as an iterator of chunks, read as it arrives
        (the caller bounds the body's time; the head must come within REQUEST_TIMEOUT_S)."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, headers, reader = await self._send("GET", path, None)
        except TimeoutError:
            await self.close()
            raise HttpError(f"GET {path}: no response within {REQUEST_TIMEOUT_S:g} s") from None
        return status, headers, self._chunks(headers, reader)
