"""A lean, auto-pipelining Redis connection for the lookup hot path.

redis-py spends ~150 us of Python per call (connection pool, retries,
command parsing hooks); at thousands of lookups per second that, not Redis,
is the wall. This connection does only what the hot path needs: every
command issued during one turn of the event loop is packed (hiredis) into a
single write, replies are parsed by hiredis and handed to their callers in
order. Everything else in the service keeps using redis-py.

Failures map to redis-py's exception types, so the API answers them the
same way (503 for a Redis that is down or stuck). A command Redis leaves
unanswered fails within ``COMMAND_TIMEOUT_S + WATCHDOG_INTERVAL_S`` of being
sent (1.75 s), whatever else the connection carries: the request's 503 comes
within the 2 s docs/api.md promises, as on the framework's path (redis-py's
socket timeout).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from segments_core.redis_client import COMMAND_TIMEOUT_S, CONNECT_TIMEOUT_S

WATCHDOG_INTERVAL_S = 0.25
"""How often a connection checks the age of its oldest unanswered command."""


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.flush_scheduled = False
        self.sent_at: collections.deque[float] = collections.deque()
        """When each waiter's command was sent (loop time), in the waiters' order."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            self.sent_at.popleft()
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                text = str(reply)
                error = NoScriptError if text.startswith("NOSCRIPT") else ResponseError
                waiter.set_exception(error(text))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        self.closed = True
        self.sent_at.clear()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        self.sent_at.append(self.loop.time())
        self.outgoing.append(packed)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        return waiter

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()


class _Pipeline:
    """Commands sent in one write, replies in order; like redis-py's, the first
    error is raised once every reply is in."""

    def __init__(self, connection: RespConnection) -> None:
        self.connection = connection
        self.commands: list[bytes] = []

    def execute_command(self, *args: Any) -> _Pipeline:
        self.commands.append(hiredis.pack_command(args))
        return self

    async def execute(self) -> list[Any]:
        protocol = await self.connection._live()
        waiters = [protocol.send(packed) for packed in self.commands]
        self.commands = []
        replies = await asyncio.gather(*waiters, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


class RespConnection:
    """One pipelined connection to a single Redis (not a Cluster)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("the hot-path connection speaks plain redis:// only")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.lstrip("/") or 0)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(loop), self.host, self.port),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        setup = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            setup.append(protocol.send(hiredis.pack_command(("AUTH", *auth))))
        if self.db:
            setup.append(protocol.send(hiredis.pack_command(("SELECT", self.db))))
        if setup:
            await asyncio.wait_for(asyncio.gather(*setup), COMMAND_TIMEOUT_S)
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch())
        return protocol

    async def _live(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                self._protocol = await self._connect()
            return self._protocol

    async def _watch(self) -> None:
        """Fails the connection when Redis leaves a command unanswered too long.

        Replies come in the order commands were sent, so the oldest
        unanswered command is the first waiter: its age says it all."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            protocol = self._protocol
            if protocol is None or protocol.closed or not protocol.sent_at:
                continue
            if protocol.loop.time() - protocol.sent_at[0] > COMMAND_TIMEOUT_S:
                protocol.fail(RedisTimeoutError("Redis did not answer in time"))

    async def execute(self, *args: Any) -> Any:
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._live()
        return await protocol.send(hiredis.pack_command(args))

    # The calls the store makes, named as in redis-py.
    execute_command = execute

    def pipeline(self, transaction: bool = False) -> _Pipeline:
        if transaction:
            raise ValueError("the hot-path connection has no MULTI pipelines")
        return _Pipeline(self)

    async def script_load(self, source: str) -> str:
        return str(await self.execute("SCRIPT", "LOAD", source))

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.closed = True
            self._protocol.transport.close()
