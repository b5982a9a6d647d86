"""``segments_client`` (client/, SPEC §8): units, then against a real server.

Freshness is checked by polling until the expected answer comes (a generous
bound, never a timed assertion of speed); staleness by asserting that no
answer after a change ever shows the state before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from segments_client import (
    AddItem,
    AsyncClient,
    BadRequest,
    ChangeEvent,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    ResetEvent,
    SegmentEvent,
    Unauthorized,
    Unavailable,
)
from segments_client._retry import pause_s, retry_after_s
from segments_client.cache import MembershipCache
from segments_client.errors import ServerError, error_for
from segments_client.sse import Comment, Message, SSEParser

from segments_dev.embedded import EmbeddedRedis, free_port
from service.app import create_app
from service.settings import Settings, Tokens
from tests.support.live import FeedReader, LiveServer, wait_until

# --- units -------------------------------------------------------------------------------


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = ["event: change", "id: C1", "data: {\"a\":", "data:1}", ""]
    assert [parser.line(line) for line in lines][-1] == Message("change", '{"a":\n1}', "C1")
    assert parser.line(": live") == Comment("live")
    # A block of only an id sets the last id and dispatches nothing.
    assert [parser.line(line) for line in ("id: C2", "")] == [None, None]
    assert parser.last_id == "C2"
    # A block cut before its end does not count.
    parser.line("id: C3")
    assert parser.last_id == "C2"
    assert parser.line("retry: 10") is None and parser.line("data: x") is None
    assert parser.line("") == Message("message", "x", "C3")


class FakeClock:
    def __init__(self) -> None:
        self.ns = 1_000_000 * 1_764_000_000_000

    def __call__(self) -> int:
        return self.ns


def test_cache_entry_never_outlives_its_earliest_deadline() -> None:
    clock = FakeClock()
    cache = MembershipCache(10, clock_ns=clock)
    cache.set_serving(True)
    now_ms = clock.ns // 1_000_000
    ticket = cache.begin(1)
    assert ticket is not None
    cache.store(ticket, [("A", None), ("B", now_ms + 5), ("C", now_ms + 9)])
    assert cache.get(1) == ["A", "B", "C"]
    clock.ns = (now_ms + 5) * 1_000_000 - 1  # the last ns before B's deadline
    assert cache.get(1) == ["A", "B", "C"]
    clock.ns += 1
    assert cache.get(1) is None  # never B past its deadline (nor a guess without it)
    ticket = cache.begin(2)
    assert ticket is not None
    cache.store(ticket, [("A", now_ms)])  # already past: not kept
    assert len(cache) == 1


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = MembershipCache(3)
    cache.set_serving(True)
    for uid in range(1, 6):
        ticket = cache.begin(uid)
        assert ticket is not None
        cache.store(ticket, [("A", None)])
        if uid == 3:
            assert cache.get(1) == ["A"]  # 1 used again: 2 is now the oldest
    assert len(cache) == 3 and cache.evictions == 2
    assert [uid for uid in range(1, 6) if cache.get(uid)] == [1, 4, 5]


def test_a_fetch_overtaken_by_an_event_is_not_kept() -> None:
    cache = MembershipCache(10)
    assert cache.begin(1) is None  # not serving: nothing is kept
    cache.set_serving(True)
    for overtake in (
        lambda: cache.invalidate(1),
        cache.clear,
        lambda: cache.segment_deleted("A"),
        lambda: cache.set_serving(False),
    ):
        cache.set_serving(True)
        ticket = cache.begin(1)
        assert ticket is not None
        overtake()
        cache.set_serving(True)
        cache.store(ticket, [("A", None)])
        assert cache.get(1) is None
    # A deleted slug is not kept until it is created again.
    ticket = cache.begin(1)
    assert ticket is not None
    cache.store(ticket, [("A", None)])
    assert cache.get(1) is None
    cache.segment_created("A")
    ticket = cache.begin(1)
    assert ticket is not None
    cache.store(ticket, [("A", None)])
    assert cache.get(1) == ["A"]
    cache.set_serving(False)
    assert cache.get(1) is None  # kept, but not served while the feed is down


def test_retry_after_and_backoff() -> None:
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None
    assert retry_after_s("soon") is None
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 25 < (retry_after_s(later) or 0) <= 30
    assert all(pause_s(attempt, 2.0) >= 2.0 for attempt in range(8))
    assert all(0 < pause_s(attempt, None) <= 1.0 for attempt in range(20))


def test_error_classes() -> None:
    assert isinstance(error_for(404, {"detail": "x", "extra": {"unknown": ["A"]}}), NotFound)
    assert error_for(404, {"detail": "x", "extra": {"unknown": ["A"]}}).unknown == ["A"]  # type: ignore[attr-defined]
    assert isinstance(error_for(422, None), BadRequest)
    assert isinstance(error_for(500, {"detail": "boom"}), ServerError)
    unavailable = error_for(503, {"detail": "later"}, 2.0)
    assert isinstance(unavailable, Unavailable) and unavailable.retry_after == 2.0
    assert (unavailable.status, unavailable.message) == (503, "later")


# --- against the service -----------------------------------------------------------------


@pytest.fixture
def live(clean_redis_url: str) -> Iterator[LiveServer]:
    app = create_app(Settings(redis_url=clean_redis_url, sweep_interval_s=0.2))
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def writer(live: LiveServer) -> Iterator[Client]:
    """Another process's client: changes the cached client does not make itself."""
    with Client(live.url, timeout=10) as other:
        yield other


def test_every_endpoint_typed(live: LiveServer) -> None:
    with Client(live.url, timeout=10) as api:
        created = api.create_segment("A", description="first", percent=None)
        assert (created.slug, created.description, created.percent, created.members) == (
            "A",
            "first",
            None,
            0,
        )
        assert api.create_segment("B").slug == "B"
        assert [s.slug for s in api.list_segments()] == ["A", "B"]
        assert api.update_segment("B", percent=50).percent == 50
        assert api.update_segment("B", percent=None).percent is None
        assert api.update_segment("B", description="d").description == "d"
        assert api.register_users([1, 2, 3]) == 3
        deadline = datetime.now(UTC) + timedelta(hours=1)
        after = api.change(1, add=["A", AddItem("B", expires_at=deadline)])
        assert after == ["A", "B"]
        assert api.change(2, add=[AddItem("A", ttl_seconds=60)]) == ["A"]
        assert api.segments(1) == ["A", "B"]
        expanded = {m.slug: m.expires_at for m in api.memberships(1)}
        assert expanded["A"] is None
        assert abs((expanded["B"] - deadline).total_seconds()) < 0.002  # type: ignore[operator]
        assert api.lookup([2, 1, 99]) == {2: ["A"], 1: ["A", "B"], 99: []}
        assert api.get_segment("A").members == 2
        assert api.change(1, remove=["A"]) == ["B"]
        api.delete_user(2)
        assert api.segments(2) == []
        api.delete_segment("B")
        assert api.segments(1) == []
        assert api.stats().hits == 0  # no cache


async def test_report_link(clean_redis_url: str, db: str) -> None:
    """The link comes once the archiver has caught up (it runs in this loop, so the
    blocking client runs in a thread)."""
    from tests.support.history import running_archiver

    app = create_app(Settings(redis_url=clean_redis_url, database_url=db))
    with LiveServer(app) as server, Client(server.url, timeout=10) as api:
        await asyncio.to_thread(api.create_segment, "A")
        await asyncio.to_thread(api.change, 1, ["A"])
        async with running_archiver(clean_redis_url, db):
            period = datetime.now(UTC).strftime("%Y-%m")
            link = await asyncio.to_thread(api.report_link, period, user_id=1, segment="A")
        assert link.url.startswith(server.url) and link.expires_at > datetime.now(UTC)
        assert "segment=A" in link.url


def test_typed_errors_carry_status_and_message(live: LiveServer) -> None:
    with Client(live.url, timeout=10) as api:
        api.create_segment("A")
        with pytest.raises(Conflict) as conflict:
            api.create_segment("A")
        assert conflict.value.status == 409 and "A" in conflict.value.message
        with pytest.raises(NotFound) as missing:
            api.change(1, add=["A", "NOPE", "NADA"])
        assert missing.value.status == 404 and missing.value.unknown == ["NADA", "NOPE"]
        assert api.segments(1) == []  # all or nothing
        with pytest.raises(NotFound):
            api.get_segment("NOPE")
        with pytest.raises(BadRequest) as bad:
            api.create_segment("-bad")
        assert bad.value.status in (400, 422) and bad.value.message
        with pytest.raises(BadRequest):
            api.segments(0)
        with pytest.raises(TypeError):
            api.segments("5")  # type: ignore[arg-type]


def test_tokens(clean_redis_url: str) -> None:
    settings = Settings(redis_url=clean_redis_url, tokens=Tokens.parse("r:read,w:write"))
    with LiveServer(create_app(settings)) as server:
        with Client(server.url) as anonymous, pytest.raises(Unauthorized) as no_token:
            anonymous.segments(1)
        assert no_token.value.status == 401
        with Client(server.url, token="r") as reader:
            assert reader.segments(1) == []
            with pytest.raises(Forbidden):
                reader.create_segment("A")
        with Client(server.url, token="w", cache=True) as cached:
            cached.create_segment("A")
            cached.change(1, add=["A"])
            wait_until(lambda: cached.stats().feed_connected, what="the feed (with a token)")
            # The event of the change may overtake the first fetch (then not kept): poll.
            wait_until(
                lambda: cached.segments(1) == ["A"] and cached.stats().hits >= 1,
                what="an answer from memory",
            )


class _Flaky(http.server.BaseHTTPRequestHandler):
    """503 with Retry-After: 1 for the first request, then the answer."""

    times: list[float] = []

    def do_GET(self) -> None:
        _Flaky.times.append(time.monotonic())
        if len(_Flaky.times) == 1:
            body, status = b'{"status_code": 503, "detail": "busy"}', 503
        else:
            body, status = b'{"user_id": 1, "segments": ["A"]}', 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_retry_honours_retry_after_within_the_timeout() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _Flaky.times = []
        with Client(url, timeout=0.5) as hurried, pytest.raises(Unavailable) as gave_up:
            hurried.segments(1)
        # Retry-After is past its timeout: it gives up at once, saying when to come back.
        assert len(_Flaky.times) == 1 and gave_up.value.retry_after == 1.0
        _Flaky.times = []
        with Client(url, timeout=5) as patient:
            assert patient.segments(1) == ["A"]
        assert len(_Flaky.times) == 2
        assert _Flaky.times[1] - _Flaky.times[0] >= 1.0  # waited as told (a lower bound)
    finally:
        server.shutdown()
        server.server_close()


def test_connection_failures_are_retried_then_unavailable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", timeout=0.3) as api:
        with pytest.raises(Unavailable) as down:
            api.segments(1)
        assert down.value.status is None


def test_redis_down_is_unavailable_then_recovers(private_redis: EmbeddedRedis) -> None:
    """The service's own 503 (Redis stopped) is retried until it is back."""
    app = create_app(Settings(redis_url=private_redis.url))
    with LiveServer(app) as server, Client(server.url, timeout=0.5) as api:
        api.segments(1)
        private_redis.stop()
        with pytest.raises(Unavailable) as down:
            api.segments(1)
        assert down.value.status == 503 and down.value.retry_after is not None
        restart = threading.Timer(0.5, private_redis.start)
        restart.start()
        try:
            with Client(server.url, timeout=30) as patient:
                assert patient.segments(1) == []
        finally:
            restart.join()


def test_own_change_is_seen_at_once(live: LiveServer, writer: Client) -> None:
    writer.create_segment("A")
    writer.create_segment("B")
    with Client(live.url, cache=True, timeout=10) as api:
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        assert api.segments(1) == [] and api.segments(1) == []
        assert api.stats().hits == 1
        for step in range(20):  # no wait between the change and the lookup
            slug = "AB"[step % 2]
            assert api.change(1, add=[slug], remove=["BA"[step % 2]]) == [slug]
            assert api.segments(1) == [slug]
        api.delete_user(1)
        assert api.segments(1) == []
        api.change(1, add=["A"])
        api.delete_segment("A")
        assert api.segments(1) == []


def test_another_writers_change_is_seen(live: LiveServer, writer: Client) -> None:
    writer.create_segment("A")
    with Client(live.url, cache=True, timeout=10) as api:
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        assert api.segments(7) == [] and api.segments(7) == []
        assert api.stats().hits >= 1
        writer.change(7, add=["A"])
        wait_until(lambda: api.segments(7) == ["A"], what="the change to reach the cache")
        assert api.segments(7) == ["A"]
        writer.delete_segment("A")  # one event for the slug, then per-member removals
        wait_until(lambda: api.segments(7) == [], what="the deletion to reach the cache")
        stats = api.stats()
        assert stats.invalidations >= 2 and stats.feed_lag_s is not None


def test_deadline_exact_when_cached(live: LiveServer, writer: Client) -> None:
    writer.create_segment("T")
    writer.create_segment("P")
    with Client(live.url, cache=True, timeout=10) as api:
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        writer.change(3, add=["P", AddItem("T", ttl_seconds=2)])
        (deadline,) = [m.expires_at for m in writer.memberships(3) if m.slug == "T"]
        assert deadline is not None
        deadline_ns = round(deadline.timestamp() * 1000) * 1_000_000
        seen_before = hits_before = 0
        while True:
            started = time.time_ns()
            answer = api.segments(3)
            if started >= deadline_ns:
                assert answer == ["P"]  # never T at or after its deadline, cached or not
                if time.time_ns() > deadline_ns + 300_000_000:
                    break
            elif "T" in answer and time.time_ns() < deadline_ns:
                seen_before += 1
                hits_before = api.stats().hits
        assert seen_before > 0 and hits_before > 0  # it was served from memory before
        assert api.segments(3) == ["P"] and api.segments(3) == ["P"]


def test_feed_dropped_no_stale_answer_then_recovery(clean_redis_url: str, client: Any) -> None:
    """The server stops: the cache serves nothing (its feed is down), so a change
    made meanwhile (through another app on the same Redis) is never hidden; a
    server on the same port brings the feed back, and the cache with it."""
    first = LiveServer(create_app(Settings(redis_url=clean_redis_url))).start()
    port = first.port
    assert client.post("/api/v1/segments", json={"slug": "A"}).status_code == 201
    with contextlib.ExitStack() as stack:
        stack.callback(first.stop)
        api = stack.enter_context(Client(first.url, cache=True, timeout=1))
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        assert api.segments(5) == [] and api.segments(5) == []
        assert api.stats().hits == 1
        first.stop()
        wait_until(lambda: not api.stats().feed_connected, what="the feed to drop")
        changed = client.post("/api/v1/users/5/segments", json={"add": ["A"]})
        assert changed.status_code == 200
        with pytest.raises(Unavailable):
            api.segments(5)  # not the stale []
        with LiveServer(create_app(Settings(redis_url=clean_redis_url)), port=port):
            answers: list[Any] = []

            def fresh() -> bool:
                try:
                    answers.append(api.segments(5))
                except Unavailable:
                    return False
                return api.stats().feed_connected and api.stats().hits > 1

            wait_until(fresh, what="the feed and the cache to come back")
            assert all(a == ["A"] for a in answers)
            stats = api.stats()
            assert stats.reconnects >= 1 and stats.entries == 1


def test_reset_empties_the_cache(live: LiveServer, writer: Client) -> None:
    writer.create_segment("A")
    with Client(live.url, cache=True, timeout=10) as api:
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        api.segments(1)
        assert api.stats().entries == 1
        handler = api._handler
        assert handler is not None
        handler.line("event: reset")
        handler.line('data: {"reason": "test"}')
        handler.line("")
        assert api.stats().entries == 0 and api.stats().resets == 1


def test_lru_bound_and_stats(live: LiveServer) -> None:
    with Client(live.url, cache=True, max_entries=5, timeout=10) as api:
        wait_until(lambda: api.stats().feed_connected, what="the feed")
        for uid in range(1, 11):
            api.segments(uid)
        for uid in range(6, 11):
            api.segments(uid)
        stats = api.stats()
        assert (stats.entries, stats.evictions, stats.hits, stats.misses) == (5, 5, 5, 10)
        assert api.lookup([6, 7, 1]) == {6: [], 7: [], 1: []}
        assert api.stats().hits == 7


def test_changes_iterator_resumes(live: LiveServer, writer: Client) -> None:
    with FeedReader(live.url) as reader:
        start = reader.live().cursor  # before the writes (the iterator connects when first asked)
    with Client(live.url, timeout=10) as api:
        events = api.changes(last_event_id=start)
        writer.create_segment("A")
        writer.change(1, add=["A"])
        first = next(events)
        second = next(events)
        events.close()
        assert isinstance(first, SegmentEvent) and first.action == "created"
        assert isinstance(second, ChangeEvent) and (second.user_id, second.segment) == (1, "A")
        writer.change(2, add=["A"])
        resumed = api.changes(last_event_id=first.cursor, user_id=2)
        assert next(resumed).user_id == 2  # type: ignore[union-attr]
        resumed.close()
        reset = api.changes(last_event_id="garbage", reconnect=False)
        assert isinstance(next(reset), ResetEvent)
        reset.close()
        with pytest.raises(BadRequest):
            next(api.changes(user_id=0))


async def test_async_client(live: LiveServer, writer: Client) -> None:
    writer.create_segment("A")
    async with AsyncClient(live.url, cache=True, timeout=10) as api:
        for _ in range(500):
            if api.stats().feed_connected:
                break
            await asyncio.sleep(0.02)
        assert api.stats().feed_connected
        assert await api.segments(1) == [] and await api.segments(1) == []
        assert api.stats().hits == 1
        assert await api.change(1, add=["A"]) == ["A"]
        assert await api.segments(1) == ["A"]
        writer.change(1, remove=["A"])
        for _ in range(500):
            if await api.segments(1) == []:
                break
            await asyncio.sleep(0.02)
        assert await api.segments(1) == []
        assert await api.lookup([1, 2]) == {1: [], 2: []}
        with pytest.raises(Conflict):
            await api.create_segment("A")
        with FeedReader(live.url) as reader:
            start = reader.live().cursor
        writer.change(3, add=["A"])
        events = api.changes(user_id=3, last_event_id=start)
        event = await anext(events)
        await events.aclose()
        assert isinstance(event, ChangeEvent) and event.user_id == 3


def test_client_distribution_has_its_own_light_dependencies() -> None:
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parent.parent / "client/pyproject.toml").read_text())
    assert meta["project"]["name"] == "segments-client"
    assert [d.split(">")[0] for d in meta["project"]["dependencies"]] == ["httpx"]  # one
    # And the package imports nothing of the server's.
    source = "\n".join(
        p.read_text()
        for p in (Path(__file__).parent.parent / "client/src/segments_client").glob("*.py")
    )
    for server_module in ("service", "segments_core", "archiver", "litestar", "redis", "msgspec"):
        assert f"import {server_module}" not in source
        assert f"from {server_module}" not in source
