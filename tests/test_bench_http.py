"""The bench's small HTTP client, against an in-process asyncio server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bench.httpclient import Connection, HttpError, Target

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n"
    b"5\r\nuser_\r\n"
    b"7\r\nid\n1,a\n\r\n"
    b"0\r\n\r\n"
)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length) if length else b""
        path = head.split(b" ")[1]
        if path == b"/csv":
            writer.write(CHUNKED)
        elif path == b"/close":
            writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        else:
            echo = b'{"path":"' + path + b'","n":' + str(len(body)).encode() + b"}"
            auth = b"yes" if b"Bearer t0k" in head else b"no"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: "
                + str(len(echo)).encode()
                + b"\r\nx-auth: "
                + auth
                + b"\r\n\r\n"
                + echo
            )
        await writer.drain()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    server = await asyncio.start_server(_handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield Target.from_url(f"http://127.0.0.1:{port}")
    server.close()


async def test_keep_alive_json_and_auth(target: Target) -> None:
    conn = Connection(target, token="t0k")
    try:
        first = await conn.json("POST", "/a", {"user_ids": [1, 2]})
        second = await conn.request("GET", "/b")
    finally:
        await conn.close()
    assert first.status == 200 and first.json() == {"path": "/a", "n": 18}
    assert first.headers["x-auth"] == "yes"
    assert second.json() == {"path": "/b", "n": 0}


async def test_chunked_stream(target: Target) -> None:
    conn = Connection(target)
    try:
        status, headers, chunks = await conn.stream("/csv")
        body = b"".join([c async for c in chunks])
        again = await conn.request("GET", "/after")  # the connection is still usable
    finally:
        await conn.close()
    assert status == 200 and headers["content-type"] == "text/csv"
    assert body == b"user_id\n1,a\n"
    assert again.status == 200


async def test_reconnects_after_connection_close(target: Target) -> None:
    conn = Connection(target)
    try:
        assert (await conn.request("GET", "/close")).status == 204
        assert (await conn.request("GET", "/x")).json() == {"path": "/x", "n": 0}
    finally:
        await conn.close()


def test_target_from_url() -> None:
    t = Target.from_url("http://localhost:8000/base/")
    assert (t.host, t.port, t.base_path, t.url) == (
        "localhost",
        8000,
        "/base",
        "http://localhost:8000/base",
    )
    with pytest.raises(ValueError):
        Target.from_url("https://x")


def test_http_error_is_runtime_error() -> None:
    assert issubclass(HttpError, RuntimeError)
