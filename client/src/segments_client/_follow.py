"""Following the change feed: a thread for ``Client``, a task for ``AsyncClient``.

Both read ``GET /api/v1/changes`` and hand every line to one ``FeedHandler``,
which applies the events to the cache. On a drop they reconnect with the
last event id (backoff from ``RECONNECT_MIN_S`` to ``RECONNECT_MAX_S``), so
the service replays what was missed; until its "caught up" comment arrives
the cache serves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from typing import Any

import httpx

from segments_client._calls import API, answer_error
from segments_client.cache import MembershipCache
from segments_client.models import parse_time
from segments_client.sse import Comment, Message, SSEParser

log = logging.getLogger("segments_client.feed")

FEED_PATH = f"{API}/changes"
IDLE_TIMEOUT_S = 45.0
"""No byte for this long (three of the service's 15 s heartbeats): the
connection is presumed dead, and reopened."""
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MIN_S = 0.1
"""First pause before reconnecting; doubles up to RECONNECT_MAX_S."""
RECONNECT_MAX_S = 5.0


def feed_timeout(idle_timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(CONNECT_TIMEOUT_S, read=idle_timeout_s)


class FeedHandler:
    """Feed lines -> cache; keeps the cursor, connection state and lag."""

    def __init__(self, cache: MembershipCache) -> None:
        self.cache = cache
        self.parser = SSEParser()
        self.connected = False
        self.connections = 0
        self.resets = 0
        self.lag_s: float | None = None
        self.last_error: str | None = None

    @property
    def cursor(self) -> str:
        return self.parser.last_id

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        return headers

    def opened(self) -> None:
        """The service answered 200: events follow (a replay first, with a cursor)."""
        self.connections += 1
        self.connected = True
        self.last_error = None
        self.parser = SSEParser(self.cursor)  # a block cut by the drop is dropped too
        if not self.cursor:
            # Live from now: whatever happened while no feed was read is unknown.
            self.cache.clear()

    def line(self, text: str) -> None:
        item = self.parser.line(text)
        if isinstance(item, Message):
            self._message(item)
        elif isinstance(item, Comment) and not self.cache.serving:
            # Sent after the replay and while idle: every event up to now is here.
            self.cache.set_serving(True)

    def _message(self, message: Message) -> None:
        try:
            data: Any = json.loads(message.data)
        except ValueError:
            log.warning("feed: undecodable data of a %s event", message.event)
            return
        if message.event == "change":
            self.cache.invalidate(int(data["user_id"]))
            if data.get("reason") != "ttl":  # stamped with the deadline, not the change
                self.lag_s = time.time() - parse_time(data["timestamp"]).timestamp()
        elif message.event == "segment":
            if data.get("action") == "deleted":
                self.cache.segment_deleted(data["slug"])
            elif data.get("action") == "created":
                self.cache.segment_created(data["slug"])
        elif message.event == "reset":
            self.resets += 1
            self.cache.clear()

    def closed(self, error: str | None) -> None:
        self.connected = False
        self.cache.set_serving(False)
        if error:
            self.last_error = error


class Backoff:
    def __init__(self) -> None:
        self.delay = RECONNECT_MIN_S

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, RECONNECT_MAX_S)
        return delay

    def reset(self) -> None:
        self.delay = RECONNECT_MIN_S


class FeedThread:
    """Follows the feed in a daemon thread for a ``Client``."""

    def __init__(self, http: httpx.Client, handler: FeedHandler, idle_timeout_s: float) -> None:
        self._http = http
        self.handler = handler
        self._timeout = feed_timeout(idle_timeout_s)
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="segments-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            # A read blocked in another thread wakes up only when its socket is shut down.
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            error: str | None = None
            try:
                with self._http.stream(
                    "GET", FEED_PATH, headers=self.handler.headers(), timeout=self._timeout
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        raise answer_error(response)
                    self._response = response
                    if self._stop.is_set():  # closed while connecting
                        return
                    self.handler.opened()
                    backoff.reset()
                    for line in response.iter_lines():
                        self.handler.line(line)
                    error = "the service ended the feed"
            except Exception as exc:  # any failure: reconnect; never let the thread die
                error = f"{exc.__class__.__name__}: {exc}"
            finally:
                self._response = None
                self.handler.closed(error)
            if self._stop.is_set():
                return
            log.info("feed: disconnected (%s); reconnecting", error)
            self._stop.wait(backoff.next())


class FeedTask:
    """Follows the feed in an asyncio task for an ``AsyncClient``."""

    def __init__(
        self, http: httpx.AsyncClient, handler: FeedHandler, idle_timeout_s: float
    ) -> None:
        self._http = http
        self.handler = handler
        self._timeout = feed_timeout(idle_timeout_s)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="segments-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = Backoff()
        while True:
            error: str | None = None
            try:
                async with self._http.stream(
                    "GET", FEED_PATH, headers=self.handler.headers(), timeout=self._timeout
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise answer_error(response)
                    self.handler.opened()
                    backoff.reset()
                    async for line in response.aiter_lines():
                        self.handler.line(line)
                    error = "the service ended the feed"
            except asyncio.CancelledError:
                self.handler.closed(None)
                raise
            except Exception as exc:  # any failure: reconnect; never let the task die
                error = f"{exc.__class__.__name__}: {exc}"
            self.handler.closed(error)
            log.info("feed: disconnected (%s); reconnecting", error)
            await asyncio.sleep(backoff.next())
