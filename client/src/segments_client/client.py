"""``Client``: the blocking client (a connection pool shared by threads)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import httpx

from segments_client import _calls as calls
from segments_client._calls import UNSET, Call, Unset
from segments_client._follow import (
    FEED_PATH,
    IDLE_TIMEOUT_S,
    Backoff,
    FeedHandler,
    FeedThread,
    feed_timeout,
)
from segments_client._retry import pause_s
from segments_client.cache import MAX_ENTRIES, MembershipCache
from segments_client.errors import SegmentsError
from segments_client.models import (
    AddItem,
    CacheStats,
    FeedEvent,
    Membership,
    ReportLink,
    Segment,
    feed_event,
)
from segments_client.sse import Message, SSEParser

T = TypeVar("T")

POOL_CONNECTIONS = 100
"""Connections kept to the service (per client): one per concurrent caller."""


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


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


class Client:
    """The Segments API over HTTP, blocking.

    ``timeout`` bounds each call, retries included: 503 answers and failed
    connections are tried again with backoff (at least the service's
    Retry-After) while time is left. With ``cache=True`` lookups are answered
    from memory kept fresh by the change feed (see README.md); ``max_entries``
    bounds it. Use as a context manager, or call ``close()``.
    """

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
        headers = auth_headers(token)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=POOL_CONNECTIONS, max_keepalive_connections=POOL_CONNECTIONS
            ),
        )
        self._headers = headers
        self._feed_idle_timeout = feed_idle_timeout
        self._cache: MembershipCache | None = None
        self._handler: FeedHandler | None = None
        self._feed: FeedThread | None = None
        self._feed_http: httpx.Client | None = None
        if cache:
            self._cache = MembershipCache(max_entries)
            self._handler = FeedHandler(self._cache)
            self._feed_http = httpx.Client(base_url=self.base_url, headers=headers)
            self._feed = FeedThread(self._feed_http, self._handler, feed_idle_timeout)
            self._feed.start()

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
        if self._feed_http is not None:
            self._feed_http.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def stats(self) -> CacheStats:
        """Cache hits, misses, entries and the feed's state (zeros without a cache)."""
        return cache_stats(self._cache, self._handler)

    # -- the calls ----------------------------------------------------------------------

    def _run(self, call: Call[T]) -> T:
        give_up = time.monotonic() + self.timeout
        attempt = 0
        while True:
            left = give_up - time.monotonic()
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=call.params,
                    json=call.json,
                    timeout=max(left, 0.001),
                )
            except httpx.TransportError as exc:
                error, again = calls.transport_error(exc, call)
            else:
                if response.status_code != 503:
                    return calls.outcome(call, response)
                error, again = calls.answer_error(response), True
            if not again:
                raise error
            pause = pause_s(attempt, getattr(error, "retry_after", None))
            if time.monotonic() + pause >= give_up:
                raise error
            time.sleep(pause)
            attempt += 1

    def create_segment(
        self, slug: str, *, description: str = "", percent: float | None = None
    ) -> Segment:
        segment = self._run(calls.create_segment(slug, description, percent))
        self._segments_changed()
        return segment

    def list_segments(self) -> list[Segment]:
        return self._run(calls.list_segments())

    def get_segment(self, slug: str) -> Segment:
        return self._run(calls.get_segment(slug))

    def update_segment(
        self,
        slug: str,
        *,
        description: str | Unset = UNSET,
        percent: float | Unset | None = UNSET,
    ) -> Segment:
        """Changes what is given; ``percent=None`` ends the rollout."""
        segment = self._run(calls.update_segment(slug, description, percent))
        self._segments_changed()
        return segment

    def delete_segment(self, slug: str) -> None:
        self._run(calls.delete_segment(slug))
        self._segments_changed()

    def register_users(self, user_ids: Iterable[int]) -> int:
        """Makes the users known; returns how many were not known before."""
        return self._run(calls.register_users(user_ids))

    def delete_user(self, user_id: int) -> None:
        self._run(calls.delete_user(user_id))
        self._user_changed(user_id)

    def segments(self, user_id: int) -> list[str]:
        """The user's segments, sorted (from memory with ``cache=True`` when it may)."""
        cache = self._cache
        if cache is None:
            return self._run(calls.segments(user_id))
        found = cache.get(user_id)
        if found is not None:
            return found
        return [m.slug for m in self._fetch(cache, user_id)]

    def memberships(self, user_id: int) -> list[Membership]:
        """The user's segments with their deadlines (always asks the service)."""
        return self._run(calls.memberships(user_id))

    def _fetch(self, cache: MembershipCache, user_id: int) -> list[Membership]:
        ticket = cache.begin(user_id)
        try:
            found = self._run(calls.memberships(user_id))
        except BaseException:
            if ticket is not None:
                cache.abandon(ticket)
            raise
        if ticket is not None:
            cache.store(ticket, [(m.slug, deadline_ms(m)) for m in found])
        return found

    def lookup(self, user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Segments of many users (1 to 1,000), one round trip for those not in memory.

        The batch endpoint tells no deadlines, so its answers are not kept in
        memory; ``segments()`` fills the cache.
        """
        ids = list(user_ids)
        cache = self._cache
        if cache is None:
            return self._run(calls.lookup(ids))
        out: dict[int, list[str]] = {}
        missing: list[int] = []
        for uid in ids:
            found = cache.get(uid)
            if found is None:
                missing.append(uid)
            else:
                out[uid] = found
        if missing:
            out.update(self._run(calls.lookup(missing)))
        return {uid: out[uid] for uid in ids}

    def change(
        self,
        user_id: int,
        add: Iterable[str | AddItem | dict[str, Any]] = (),
        remove: Iterable[str] = (),
    ) -> list[str]:
        """Adds and removes segments atomically; returns the user's segments after it.

        An add is a slug, or ``AddItem(slug, ttl_seconds=...)`` /
        ``AddItem(slug, expires_at=...)``. The next lookup of this client sees it.
        """
        try:
            return self._run(calls.change(user_id, add, remove))
        finally:
            # Also after a failure: it may have been applied before the answer was lost.
            self._user_changed(user_id)

    def report_link(
        self, period: str, *, user_id: int | None = None, segment: str | None = None
    ) -> ReportLink:
        """A signed link to the month's history as CSV (``period`` is ``YYYY-MM``)."""
        return self._run(calls.report_link(period, user_id, segment))

    def changes(
        self,
        *,
        segment: str | None = None,
        user_id: int | None = None,
        last_event_id: str | None = None,
        reconnect: bool = True,
    ) -> Iterator[FeedEvent]:
        """The change feed as typed events, for as long as the caller iterates.

        Each event's ``cursor`` resumes after it (``last_event_id``). With
        ``reconnect`` a dropped connection is reopened from the last cursor
        (a ``ResetEvent`` says when events were lost); without it the
        iterator ends with the connection. Errors of the first connection
        (a bad filter, a missing token) are raised.
        """
        params = calls.feed_params(segment, user_id)
        parser = SSEParser(last_event_id or "")
        backoff = Backoff()
        first = True
        with httpx.Client(base_url=self.base_url, headers=self._headers) as http:
            while True:
                headers = {"Accept": "text/event-stream"}
                if parser.last_id:
                    headers["Last-Event-ID"] = parser.last_id
                try:
                    with http.stream(
                        "GET",
                        FEED_PATH,
                        params=params,
                        headers=headers,
                        timeout=feed_timeout(self._feed_idle_timeout),
                    ) as response:
                        if response.status_code != 200:
                            response.read()
                            raise calls.answer_error(response)
                        first = False
                        backoff.reset()
                        parser = SSEParser(parser.last_id)
                        for line in response.iter_lines():
                            item = parser.line(line)
                            if isinstance(item, Message):
                                event = _typed(item)
                                if event is not None:
                                    yield event
                except (httpx.TransportError, SegmentsError):
                    if first or not reconnect:
                        raise
                if not reconnect:
                    return
                time.sleep(backoff.next())

    # -- own changes: seen by the next lookup at once ----------------------------------------

    def _user_changed(self, user_id: int) -> None:
        if self._cache is not None:
            self._cache.invalidate(user_id)

    def _segments_changed(self) -> None:
        # A segment's creation (a percent), percent change or deletion touches
        # many users, all done when the call returns: forget everything.
        if self._cache is not None:
            self._cache.clear()


def _typed(message: Message) -> FeedEvent | None:
    try:
        data = json.loads(message.data)
    except ValueError:
        return None
    return feed_event(message.event, data, message.last_id)
