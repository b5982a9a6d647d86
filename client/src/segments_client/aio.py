"""``AsyncClient``: the same methods as ``Client``, as coroutines (one event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
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
from segments_client._follow import FEED_PATH, IDLE_TIMEOUT_S, Backoff, FeedTask
from segments_client._follow import feed_timeout as _feed_timeout
from segments_client.cache import MAX_ENTRIES, MembershipCache
from segments_client.errors import SegmentsError
from segments_client.models import AddItem, FeedEvent, Membership, ReportLink, Segment
from segments_client.sse import SSEParser

T = TypeVar("T")


class AsyncClient(ClientBase):
    """The Segments API over HTTP, for asyncio; see ``Client`` for the behaviour.

    With ``cache=True`` the feed is followed by a task started on
    ``__aenter__`` (or the first call), on the running loop.
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
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=timeout,
            limits=pool_limits(),
        )
        self._feed: FeedTask | None = None
        self._feed_http: httpx.AsyncClient | None = None
        if self._handler is not None:
            self._feed_http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers)
            self._feed = FeedTask(self._feed_http, self._handler, feed_idle_timeout)
        self._started = False

    # -- lifecycle --------------------------------------------------------------------

    def _start(self) -> None:
        if not self._started:
            self._started = True
            if self._feed is not None:
                self._feed.start()

    async def aclose(self) -> None:
        if self._feed is not None and self._started:
            await self._feed.close()
        if self._feed_http is not None:
            await self._feed_http.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        self._start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- the calls ----------------------------------------------------------------------

    async def _run(self, call: Call[T]) -> T:
        self._start()
        attempts = Attempts(self.timeout)
        while True:
            try:
                response = await self._http.send(
                    build_request(self._http, call, attempts.request_timeout())
                )
            except httpx.TransportError as exc:
                error, again = calls.transport_error(exc, call)
            else:
                if response.status_code != 503:
                    return calls.outcome(call, response)
                error, again = calls.answer_error(response), True
            await asyncio.sleep(attempts.pause_after(error, again))

    async def create_segment(
        self, slug: str, *, description: str = "", percent: float | None = None
    ) -> Segment:
        segment = await self._run(calls.create_segment(slug, description, percent))
        self._segments_changed()
        return segment

    async def list_segments(self) -> list[Segment]:
        return await self._run(calls.list_segments())

    async def get_segment(self, slug: str) -> Segment:
        return await self._run(calls.get_segment(slug))

    async def update_segment(
        self,
        slug: str,
        *,
        description: str | Unset = UNSET,
        percent: float | Unset | None = UNSET,
    ) -> Segment:
        segment = await self._run(calls.update_segment(slug, description, percent))
        self._segments_changed()
        return segment

    async def delete_segment(self, slug: str) -> None:
        await self._run(calls.delete_segment(slug))
        self._segments_changed()

    async def register_users(self, user_ids: Iterable[int]) -> int:
        return await self._run(calls.register_users(user_ids))

    async def delete_user(self, user_id: int) -> None:
        await self._run(calls.delete_user(user_id))
        self._user_changed(user_id)

    async def segments(self, user_id: int) -> list[str]:
        cache = self._cache
        if cache is None:
            return await self._run(calls.segments(user_id))
        self._start()
        found = cache.get(user_id)
        if found is not None:
            return found
        return [m.slug for m in await self._fetch(cache, user_id)]

    async def memberships(self, user_id: int) -> list[Membership]:
        return await self._run(calls.memberships(user_id))

    async def _fetch(self, cache: MembershipCache, user_id: int) -> list[Membership]:
        with Filling(cache, user_id) as filling:
            found = await self._run(calls.memberships(user_id))
        return filling.store(found)

    async def lookup(self, user_ids: Iterable[int]) -> dict[int, list[str]]:
        ids = list(user_ids)
        cache = self._cache
        if cache is None:
            return await self._run(calls.lookup(ids))
        self._start()
        out, missing = cached_part(cache, ids)
        if missing:
            out.update(await self._run(calls.lookup(missing)))
        return {uid: out[uid] for uid in ids}

    async def change(
        self,
        user_id: int,
        add: Iterable[str | AddItem | dict[str, Any]] = (),
        remove: Iterable[str] = (),
    ) -> list[str]:
        try:
            return await self._run(calls.change(user_id, add, remove))
        finally:
            self._user_changed(user_id)

    async def report_link(
        self, period: str, *, user_id: int | None = None, segment: str | None = None
    ) -> ReportLink:
        return await self._run(calls.report_link(period, user_id, segment))

    async def changes(
        self,
        *,
        segment: str | None = None,
        user_id: int | None = None,
        last_event_id: str | None = None,
        reconnect: bool = True,
    ) -> AsyncIterator[FeedEvent]:
        """The change feed as typed events; see ``Client.changes``."""
        params = calls.feed_params(segment, user_id)
        parser = SSEParser(last_event_id or "")
        backoff = Backoff()
        first = True
        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers) as http:
            while True:
                headers = feed_headers(parser.last_id)
                try:
                    async with http.stream(
                        "GET",
                        FEED_PATH,
                        params=params,
                        headers=headers,
                        timeout=_feed_timeout(self._feed_idle_timeout),
                    ) as response:
                        if response.status_code != 200:
                            await response.aread()
                            raise calls.answer_error(response)
                        first = False
                        backoff.reset()
                        parser = SSEParser(parser.last_id)
                        async for line in response.aiter_lines():
                            event = line_event(parser, line)
                            if event is not None:
                                yield event
                except (httpx.TransportError, SegmentsError):
                    if first or not reconnect:
                        raise
                if not reconnect:
                    return
                await asyncio.sleep(backoff.next())
