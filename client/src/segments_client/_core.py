"""What ``Client`` and ``AsyncClient`` share: everything but the I/O.

The two clients differ only in how they wait (a thread blocks, a coroutine
awaits); building requests, reading answers, mapping errors, the retry budget
and the cache's bookkeeping are written here once.
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

import httpx

from segments_client._calls import Call
from segments_client._follow import IDLE_TIMEOUT_S, FeedHandler
from segments_client._retry import pause_s
from segments_client.cache import MAX_ENTRIES, MembershipCache
from segments_client.errors import SegmentsError
from segments_client.models import CacheStats, FeedEvent, Membership, feed_event
from segments_client.sse import Message, SSEParser

POOL_CONNECTIONS = 100
"""Connections kept to the service (per client): one per concurrent caller."""


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def pool_limits() -> httpx.Limits:
    return httpx.Limits(
        max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS
    )


def cache_stats(cache: MembershipCache | None, handler: FeedHandler | None) -> CacheStats:
    if cache is None or handler is None:
        return CacheStats(0, 0, 0, 0, 0, False, None, 0, 0)
    return CacheStats(
        hits=cache.hits,
        misses=cache.misses,
        entries=len(cache),
        evictions=cache.evictions,
        invalidations=cache.invalidations,
        feed_connected=cache.serving,
        feed_lag_s=handler.lag_s,
        reconnects=max(0, handler.connections - 1),
        resets=handler.resets,
    )


def deadline_ms(membership: Membership) -> int | None:
    if membership.expires_at is None:
        return None
    return round(membership.expires_at.timestamp() * 1000)


class Attempts:
    """One call's attempts within its timeout: how long the next may take, and the
    pause before the one after a failure (or the error, when none is left)."""

    def __init__(self, timeout: float) -> None:
        self._give_up = time.monotonic() + timeout
        self._attempt = 0

    def request_timeout(self) -> float:
        return max(self._give_up - time.monotonic(), 0.001)

    def pause_after(self, error: SegmentsError, again: bool) -> float:
        """The pause before the next attempt; raises ``error`` when there is none:
        not to be tried again, or no time left for the pause."""
        if not again:
            raise error
        pause = pause_s(self._attempt, getattr(error, "retry_after", None))
        if time.monotonic() + pause >= self._give_up:
            raise error
        self._attempt += 1
        return pause


def build_request(
    http: httpx.Client | httpx.AsyncClient, call: Call[Any], timeout: float
) -> httpx.Request:
    """The HTTP request of ``call``, given ``timeout`` seconds."""
    return http.build_request(
        call.method, call.path, params=call.params, json=call.json, timeout=timeout
    )


class Filling:
    """Fetching a user's memberships into the cache: stored when the answer comes,
    the ticket abandoned when the fetch fails (with any exception)."""

    def __init__(self, cache: MembershipCache, user_id: int) -> None:
        self._cache = cache
        self._ticket = cache.begin(user_id)

    def __enter__(self) -> Filling:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self._ticket is not None:
            self._cache.abandon(self._ticket)

    def store(self, found: list[Membership]) -> list[Membership]:
        if self._ticket is not None:
            self._cache.store(self._ticket, [(m.slug, deadline_ms(m)) for m in found])
        return found


def cached_part(cache: MembershipCache, ids: list[int]) -> tuple[dict[int, list[str]], list[int]]:
    """The segments of ``ids`` the cache holds, and the users it does not."""
    out: dict[int, list[str]] = {}
    missing: list[int] = []
    for uid in ids:
        found = cache.get(uid)
        if found is None:
            missing.append(uid)
        else:
            out[uid] = found
    return out, missing


def feed_headers(last_id: str) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    return headers


def line_event(parser: SSEParser, line: str) -> FeedEvent | None:
    """The typed event a line of the feed completes, if any."""
    item = parser.line(line)
    return typed_event(item) if isinstance(item, Message) else None


def typed_event(message: Message) -> FeedEvent | None:
    """The typed event of a feed message; None for one that is not JSON."""
    try:
        data = json.loads(message.data)
    except ValueError:
        return None
    return feed_event(message.event, data, message.last_id)


class ClientBase:
    """What both clients hold besides their connections: the settings, the cache
    and the handler of its feed; and how a call of their own updates the cache."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        cache: bool = False,
        timeout: float = 2.0,
        max_entries: int = MAX_ENTRIES,
        feed_idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._headers = auth_headers(token)
        self._feed_idle_timeout = feed_idle_timeout
        self._cache: MembershipCache | None = None
        self._handler: FeedHandler | None = None
        if cache:
            self._cache = MembershipCache(max_entries)
            self._handler = FeedHandler(self._cache)

    def stats(self) -> CacheStats:
        """Cache hits, misses, entries and the feed's state (zeros without a cache)."""
        return cache_stats(self._cache, self._handler)

    # -- own changes: seen by the next lookup at once ----------------------------------------

    def _user_changed(self, user_id: int) -> None:
        if self._cache is not None:
            self._cache.invalidate(user_id)

    def _segments_changed(self) -> None:
        # A segment's creation (a percent), percent change or deletion touches
        # many users, all done when the call returns: forget everything.
        if self._cache is not None:
            self._cache.clear()
