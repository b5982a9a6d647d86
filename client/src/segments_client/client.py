"""``Client``: the blocking client (a connection pool shared by threads)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import httpx

from segments_client import _calls as calls
from segments_client._calls import UNSET, Call, Unset
from segments_client._core import (
    Attempts,
    ClientBase,
    Filling,
    build_request,
    cached_part,
    feed_headers,
    line_event,
    pool_limits,
)
from segments_client._follow import (
    FEED_PATH,
    IDLE_TIMEOUT_S,
    Backoff,
    FeedThread,
    feed_timeout,
)
from segments_client.cache import MAX_ENTRIES, MembershipCache
from segments_client.errors import SegmentsError
from segments_client.models import (
    AddItem,
    FeedEvent,
    Membership,
    ReportLink,
    Segment,
)
from segments_client.sse import SSEParser

T = TypeVar("T")


class Client(ClientBase):
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
        super().__init__(
            base_url,
            token=token,
            cache=cache,
            timeout=timeout,
            max_entries=max_entries,
            feed_idle_timeout=feed_idle_timeout,
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            limits=pool_limits(),
        )
        self._feed: FeedThread | None = None
        self._feed_http: httpx.Client | None = None
        if self._handler is not None:
            self._feed_http = httpx.Client(base_url=self.base_url, headers=self._headers)
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

    # -- the calls ----------------------------------------------------------------------

    def _run(self, call: Call[T]) -> T:
        attempts = Attempts(self.timeout)
        while True:
            try:
                response = self._http.send(
                    build_request(self._http, call, attempts.request_timeout())
                )
            except httpx.TransportError as exc:
                error, again = calls.transport_error(exc, call)
            else:
                if response.status_code != 503:
                    return calls.outcome(call, response)
                error, again = calls.answer_error(response), True
            time.sleep(attempts.pause_after(error, again))

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
        with Filling(cache, user_id) as filling:
            found = self._run(calls.memberships(user_id))
        return filling.store(found)

    def lookup(self, user_ids: Iterable[int]) -> dict[int, list[str]]:
        """Segments of many users (1 to 1,000), one round trip for those not in memory.

        The batch endpoint tells no deadlines, so its answers are not kept in
        memory; ``segments()`` fills the cache.
        """
        ids = list(user_ids)
        cache = self._cache
        if cache is None:
            return self._run(calls.lookup(ids))
        out, missing = cached_part(cache, ids)
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
                headers = feed_headers(parser.last_id)
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
                            event = line_event(parser, line)
                            if event is not None:
                                yield event
                except (httpx.TransportError, SegmentsError):
                    if first or not reconnect:
                        raise
                if not reconnect:
                    return
                time.sleep(backoff.next())
