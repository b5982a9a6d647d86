"""A real HTTP server for the feed and client tests, and a reader of the feed.

- ``LiveServer``: the app under uvicorn in a thread of the test process, on a
  free port (so a test can look at the app's state, e.g. its feed hub).
- ``FeedReader``: reads ``GET /api/v1/changes`` in a thread and keeps every
  event, comment and the last event id, for tests to wait on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Self

import httpx
import uvicorn
from litestar import Litestar
from segments_client.sse import Comment, Message, SSEParser

from segments_dev.embedded import free_port

WAIT_S = 30.0
"""Bound of every wait of these helpers: far above what a healthy run takes."""


def wait_until(check: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    """Polls ``check`` until it returns something truthy; fails the test after ``timeout``."""
    give_up = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class LiveServer:
    """``app`` served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Litestar, port: int | None = None) -> None:
        """``port``: e.g. the port of a server stopped before, to stand in for its restart."""
        self.app = app
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                lifespan="on",
                loop="asyncio",
                log_level="warning",
                timeout_graceful_shutdown=5,
            )
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name="live-server", daemon=True)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve())
        finally:
            loop.close()

    def start(self) -> Self:
        self._thread.start()
        wait_until(lambda: self._server.started or not self._thread.is_alive(), what="server")
        if not self._server.started:
            raise RuntimeError("the live server did not start (see the log)")
        return self

    def in_loop(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` in the server's event loop (its state is not thread-safe) and returns."""
        assert self._loop is not None
        done: dict[str, Any] = {}
        ready = threading.Event()

        def run() -> None:
            try:
                done["value"] = fn()
            except BaseException as exc:
                done["error"] = exc
            ready.set()

        self._loop.call_soon_threadsafe(run)
        if not ready.wait(WAIT_S):
            raise AssertionError("the server's loop did not answer")
        if "error" in done:
            raise done["error"]
        return done.get("value")

    def stop(self) -> None:
        if self._thread.is_alive() and self._loop is not None and self._server.started:
            # As the SIGTERM hook does in a real process: end the open feeds first.
            with contextlib.suppress(RuntimeError):
                self.in_loop(lambda: self.app.state.feed.close_subscribers("server stopping"))
        self._server.should_exit = True
        self._thread.join(WAIT_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Event:
    kind: str
    cursor: str
    data: dict[str, Any]


class FeedReader:
    """Reads the change feed in a thread until closed or the server ends it."""

    def __init__(
        self,
        base_url: str,
        *,
        params: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._parser = SSEParser(last_event_id or "")
        self._lock = threading.Lock()
        request_headers = dict(headers or {})
        if last_event_id:
            request_headers["Last-Event-ID"] = last_event_id
        self._client = httpx.Client(base_url=base_url, timeout=httpx.Timeout(5, read=None))
        self._response: httpx.Response | None = None
        self._opened = threading.Event()
        self._thread = threading.Thread(
            target=self._read,
            args=("/api/v1/changes", dict(params or {}), request_headers),
            daemon=True,
        )
        self._thread.start()
        if not self._opened.wait(WAIT_S):
            raise AssertionError("the feed did not answer")

    @property
    def cursor(self) -> str:
        """The last event id (of an event or of a comment block)."""
        with self._lock:
            return self._parser.last_id

    def _read(self, path: str, params: dict[str, str], headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", path, params=params, headers=headers) as response:
                self._response = response
                self.status = response.status_code
                self._opened.set()
                if response.status_code != 200:
                    response.read()
                    return
                for line in response.iter_lines():
                    with self._lock:
                        item = self._parser.line(line)
                        if isinstance(item, Message):
                            self.events.append(
                                Event(item.event, item.last_id, json.loads(item.data))
                            )
                        elif isinstance(item, Comment):
                            self.comments.append(item.text)
        except BaseException as exc:  # the test's close() lands here too
            self.error = exc
        finally:
            self._opened.set()
            self.ended.set()

    def live(self) -> Self:
        """Waits for the replay to end (the first comment)."""
        wait_until(lambda: self.comments or self.ended.is_set(), what="the feed's first comment")
        return self

    def wait_events(self, n: int, timeout: float = WAIT_S) -> list[Event]:
        """The first ``n`` events, once there are that many."""
        wait_until(lambda: len(self.events) >= n, timeout, what=f"{n} events")
        with self._lock:
            return list(self.events[:n])

    def close(self) -> None:
        response = self._response
        if response is not None:
            # A read blocked in the thread wakes up only when its socket is shut down.
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(WAIT_S)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def readers(base_url: str, n: int, **options: Any) -> Iterator[list[FeedReader]]:
    opened = [FeedReader(base_url, **options) for _ in range(n)]
    try:
        yield opened
    finally:
        for reader in opened:
            reader.close()
