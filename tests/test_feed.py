"""The change feed, ``GET /api/v1/changes`` (SPEC §4), against a real server and Redis.

Unit tests of the cursor, the resume rule and the bounded buffer first; then
the feed over HTTP (uvicorn in a thread, or ``segments serve`` processes).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from segments_core import retention
from segments_core.keys import GLOBAL, Keyspace
from segments_core.retention import StreamBounds, trim_point
from segments_core.streams import parse_id
from service import cursor, feed
from service.app import create_app
from service.feed import EventFilter, FeedEvent, Subscription, parse_entry
from service.settings import Settings, Tokens
from tests.support import KEYSPACE, cluster, for_user
from tests.support.live import (
    WAIT_S,
    Event,
    FeedReader,
    LiveServer,
    readers,
    wait_until,
)
from tests.support.serve import ServeProcess

CHANGE_KEYS = {"user_id", "segment", "operation", "timestamp", "reason", "expires_at"}
SEGMENT_KEYS = {"slug", "action", "percent", "timestamp"}


# --- units: cursor, resume rule, retention, buffer ------------------------------------------


def test_cursor_round_trip_and_size() -> None:
    positions = [(1_764_000_000_000 + i * 7, i % 3) for i in range(17)]
    positions[5] = (0, 0)  # a stream without entries
    text = cursor.encode(16, positions)
    assert cursor.decode(text, 16) == positions
    assert text.isascii() and "=" not in text and "/" not in text and "+" not in text
    assert len(text) < 100  # short enough to send with every event
    # The hub's encoder: a base of its own, one stream moved at a time, same positions.
    encoder = cursor.Encoder(16, positions, base=1_700_000_000_000)
    for stream in (3, 0, 3, 16):
        positions[stream] = (positions[stream][0] + 5_000, 1)
        encoder.move(stream, positions[stream])
        assert cursor.decode(encoder.text(), 16) == positions


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "malformed"),
        ("not a cursor!", "base64"),
        (base64.urlsafe_b64encode(b"\x01\x10").decode(), "version"),
        (cursor.encode(8, [(1, 0)] * 9), "8 shards"),
        (cursor.encode(16, [(1, 0)] * 17)[:-4], "truncated"),
        (cursor.encode(16, [(1, 0)] * 17) + "AA", "trailing"),
        ("A" * 5000, "malformed"),
    ],
)
def test_a_bad_cursor_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(cursor.CursorError, match=why):
        cursor.decode(text, 16)


def _bounds(**kw: Any) -> StreamBounds:
    base: dict[str, Any] = {
        "stream": "s",
        "last_generated": (100, 0),
        "first": (50, 0),
        "max_deleted": None,
        "removed": None,
        "trimmed_ms": None,
    }
    return StreamBounds(**{**base, **kw})


def test_resume_rule() -> None:
    # An entry still held, or later: resumable.
    assert _bounds().resumable_from((50, 0)) and _bounds().resumable_from((100, 0))
    # Beyond the last id: a cursor of other data (or of data Redis lost).
    assert not _bounds().resumable_from((100, 1))
    # Before the first entry: only if nothing after it was ever deleted.
    assert _bounds().resumable_from((10, 0))  # never trimmed
    assert not _bounds(trimmed_ms=40).resumable_from((40, 5))
    assert _bounds(trimmed_ms=40).resumable_from((41, 0))
    # Redis 7 tells whether anything was ever removed, and the highest XDEL.
    assert _bounds(removed=0, trimmed_ms=40).resumable_from((1, 0))
    assert not _bounds(removed=3, max_deleted=(0, 0)).resumable_from((10, 0))  # unknown trim
    assert _bounds(removed=3, max_deleted=(0, 0), trimmed_ms=9).resumable_from((10, 0))
    assert not _bounds(removed=1, max_deleted=(30, 2), trimmed_ms=9).resumable_from((30, 1))
    assert _bounds(removed=1, max_deleted=(30, 2)).resumable_from((30, 2))
    # An empty stream: resumable from its end, or if nothing was trimmed.
    empty = _bounds(first=None, trimmed_ms=99)
    assert empty.resumable_from((100, 0)) and not empty.resumable_from((99, 0))
    # Nothing after the position at all: resumable, whatever was trimmed before it.
    assert _bounds(first=None, trimmed_ms=100, removed=5).resumable_from((100, 0))


def test_trim_point_keeps_the_window_and_what_is_unarchived() -> None:
    now = 1_000_000
    assert trim_point((999_999, 3), now, 600_000) == (400_000, 0)  # the window holds
    assert trim_point((300_000, 3), now, 600_000) == (300_000, 3)  # not archived yet
    assert trim_point((999_999, 3), now, 0) == (999_999, 3)
    assert trim_point((999_999, 3), 100, 600_000) == (0, 0)


def _event(stream: int, uid: int, slug: str = "S") -> FeedEvent:
    fields = {"u": str(uid), "s": slug, "o": "add", "t": "1764000000000", "r": "manual"}
    event = parse_entry(stream, (1, uid), fields)
    assert event is not None
    return event


def test_a_subscriber_buffer_is_bounded() -> None:
    async def scenario() -> None:
        sub = Subscription(EventFilter(), limit=10)
        assert sub.offer([_event(1, u) for u in range(1, 8)])
        assert not sub.offer([_event(1, u) for u in range(8, 12)])  # 11 > 10
        assert sub.closed and sub.buffered == 0  # dropped, memory released
        with pytest.raises(feed.FeedClosed):
            await sub.next(1.0)

        # A subscriber that took everything takes a batch of any size.
        keeping_up = Subscription(EventFilter(), limit=10)
        assert keeping_up.offer([_event(1, u) for u in range(1, 30)])
        assert len(await keeping_up.next(1.0) or []) == 29
        assert keeping_up.offer([_event(1, u) for u in range(1, 30)])
        assert not keeping_up.offer([_event(1, 30)])

    asyncio.run(scenario())


def test_filters_match_in_the_hub() -> None:
    by_user, by_segment = EventFilter(user_id=7), EventFilter(segment="A")
    segment_event = parse_entry(0, (1, 0), {"o": "created", "s": "A", "t": "1764000000000"})
    assert segment_event is not None
    assert by_user.matches(_event(1, 7)) and not by_user.matches(_event(1, 8))
    assert not by_user.matches(segment_event)  # segment events name no user
    assert by_segment.matches(segment_event) and not by_segment.matches(_event(1, 7, "B"))
    assert EventFilter(segment="A", user_id=7).matches(_event(1, 7, "A"))
    assert by_user.streams(KEYSPACE) == [1 + KEYSPACE.shard_of(7)]


def test_a_malformed_entry_is_skipped() -> None:
    assert parse_entry(1, (1, 0), {"u": "x", "s": "A", "o": "add", "t": "1", "r": "manual"}) is None
    assert parse_entry(1, (1, 0), {"u": "1", "s": "A", "o": "add", "t": "1"}) is None
    assert parse_entry(0, (1, 0), {"o": "renamed", "s": "A", "t": "1"}) is None


# --- the feed over HTTP ----------------------------------------------------------------------


@pytest.fixture
def live(clean_redis_url: str) -> Iterator[LiveServer]:
    app = create_app(Settings(redis_url=clean_redis_url, sweep_interval_s=0.2))
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def api(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=10) as http:
        yield http


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json() if response.status_code != 204 else None


def add(http: httpx.Client, uid: int, *items: Any) -> None:
    ok(http.post(f"/api/v1/users/{uid}/segments", json={"add": list(items)}))


def per_user(events: list[Event]) -> dict[Any, list[dict[str, Any]]]:
    """Events grouped by user (segment events under None), each group in order."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        groups[e.data.get("user_id")].append(e.data)
    return dict(groups)


def test_event_shapes(live: LiveServer, api: httpx.Client) -> None:
    with FeedReader(live.url) as reader:
        reader.live()
        ok(api.post("/api/v1/segments", json={"slug": "PLAIN"}))
        add(api, 7, {"slug": "PLAIN", "ttl_seconds": 60})
        deadline = ok(api.get("/api/v1/users/7/segments?expand=true"))["segments"][0]["expires_at"]
        ok(api.post("/api/v1/users/7/segments", json={"remove": ["PLAIN"]}))
        add(api, 8, "PLAIN")
        ok(api.patch("/api/v1/segments/PLAIN", json={"description": "d"}))
        ok(api.delete("/api/v1/segments/PLAIN"))
        ok(api.post("/api/v1/users", json={"user_ids": [9]}))
        ok(api.post("/api/v1/segments", json={"slug": "ALL", "percent": 100}))
        ok(api.delete("/api/v1/users/9"))
        events = reader.wait_events(12)
    for e in events:
        assert set(e.data) == (CHANGE_KEYS if e.kind == "change" else SEGMENT_KEYS), e
        assert e.data["timestamp"].endswith("Z")
        datetime.fromisoformat(e.data["timestamp"])
    changes = per_user([e for e in events if e.kind == "change"])
    brief = {
        u: [(d["segment"], d["operation"], d["reason"]) for d in ds] for u, ds in changes.items()
    }
    assert brief == {
        7: [("PLAIN", "add", "manual"), ("PLAIN", "remove", "manual"), ("ALL", "add", "percent")],
        8: [
            ("PLAIN", "add", "manual"),
            ("PLAIN", "remove", "segment_deleted"),
            ("ALL", "add", "percent"),
        ],
        9: [("ALL", "add", "percent"), ("ALL", "remove", "user_deleted")],
    }
    assert changes[7][0]["expires_at"] == deadline
    assert [d["expires_at"] for d in changes[7][1:] + changes[8] + changes[9]] == [None] * 7
    segments = [(e.data["slug"], e.data["action"], e.data["percent"]) for e in events
                if e.kind == "segment"]
    assert segments == [
        ("PLAIN", "created", None),
        ("PLAIN", "changed", None),
        ("PLAIN", "deleted", None),
        ("ALL", "created", 100.0),
    ]
    assert len({e.cursor for e in events}) == len(events)


def test_filters(live: LiveServer, api: httpx.Client) -> None:
    with (
        FeedReader(live.url, params={"segment": "A"}) as only_a,
        FeedReader(live.url, params={"user_id": "2"}) as only_2,
        FeedReader(live.url, params={"segment": "B", "user_id": "2"}) as b_of_2,
    ):
        for reader in (only_a, only_2, b_of_2):
            reader.live()
        for slug in ("A", "B"):
            ok(api.post("/api/v1/segments", json={"slug": slug}))
        for uid in (1, 2, 3):
            add(api, uid, "A", "B")
        ok(api.post("/api/v1/segments", json={"slug": "LAST"}))
        add(api, 2, "LAST")  # the last event each of them waits for, or not
        add(api, 1, "A")  # no event: already a member
        ok(api.post("/api/v1/users/3/segments", json={"remove": ["A"]}))
        a = only_a.wait_events(5)
        two = only_2.wait_events(3)
        b2 = b_of_2.wait_events(1)
    assert [(e.kind, e.data.get("user_id")) for e in a[:1]] == [("segment", None)]
    assert sorted((e.data["user_id"], e.data["operation"]) for e in a[1:]) == [
        (1, "add"), (2, "add"), (3, "add"), (3, "remove"),
    ]
    assert all(e.data.get("segment", e.data.get("slug")) == "A" for e in a)
    assert [(e.data["segment"]) for e in two] == ["A", "B", "LAST"]
    assert [(e.data["user_id"], e.data["segment"]) for e in b2] == [(2, "B")]
    assert len(only_a.events) == 5 and len(b_of_2.events) == 1


@pytest.mark.parametrize(
    "query",
    [
        "user_id=0",
        "user_id=abc",
        "user_id=9223372036854775808",
        "segment=-x",
        "segment=" + "a" * 101,
    ],
)
def test_bad_filters_are_400(client: Any, query: str) -> None:
    response = client.get(f"/api/v1/changes?{query}")
    assert response.status_code == 400
    assert response.json()["detail"]


def test_read_scope(clean_redis_url: str) -> None:
    from litestar.testing import TestClient

    settings = Settings(redis_url=clean_redis_url, tokens=Tokens.parse("r:read,w:write"))
    app = create_app(settings)
    with TestClient(app) as test_client:
        assert test_client.get("/api/v1/changes").status_code == 401
        bad = test_client.get("/api/v1/changes", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 403
    with LiveServer(create_app(settings)) as server:
        for token in ("r", "w"):
            auth = {"Authorization": f"Bearer {token}"}
            with FeedReader(server.url, headers=auth) as reader:
                assert reader.live().status == 200


def test_resume_without_loss_or_duplicates(live: LiveServer, api: httpx.Client) -> None:
    """A subscriber drops after its 30th event and resumes with that event's id while
    writes go on; what it got equals what a subscriber that stayed got."""
    ok(api.post("/api/v1/segments", json={"slug": "S0"}))
    ok(api.post("/api/v1/segments", json={"slug": "S1"}))
    users = range(1, 41)  # over most of the 16 shards

    def batch(slug: str) -> None:
        for uid in users:
            add(api, uid, slug)

    with FeedReader(live.url) as stayed:
        stayed.live()
        with FeedReader(live.url) as first:
            first.live()
            batch("S0")
            head = first.wait_events(30)
        batch("S1")
        with FeedReader(live.url, last_event_id=head[-1].cursor) as resumed:
            resumed.live()
            for uid in users:
                ok(api.post(f"/api/v1/users/{uid}/segments", json={"remove": ["S0"]}))
            everything = stayed.wait_events(120)
            rest = resumed.wait_events(90)
        assert len(resumed.events) == 90
    assert per_user(head + rest) == per_user(everything)
    assert Counter(e.cursor for e in rest).most_common(1)[0][1] == 1


def test_resume_from_before_the_first_entry_when_nothing_was_trimmed(
    live: LiveServer, api: httpx.Client, clean_redis_url: str
) -> None:
    """The cursor of an empty deployment resumes (no false reset); once entries
    after it are trimmed, it gets a reset."""
    with FeedReader(live.url) as early:
        start = early.live().cursor
    ok(api.post("/api/v1/segments", json={"slug": "A"}))
    for uid in (1, 2, 3):
        add(api, uid, "A")
    with FeedReader(live.url, last_event_id=start) as resumed:
        assert [e.kind for e in resumed.wait_events(4)] == ["segment", "change", "change", "change"]
    stream = for_user(1).events
    with cluster.client(clean_redis_url, decode_responses=True) as plain:
        last = parse_id(plain.xrange(stream)[-1][0])
    asyncio.run(_trim(clean_redis_url, stream, (last[0] + 1, 0)))
    with FeedReader(live.url, last_event_id=start) as too_old:
        assert too_old.wait_events(1)[0].kind == "reset"


async def _trim(url: str, stream: str, point: tuple[int, int]) -> None:
    """What the archiver does (mark, then trim), but exact: every entry below goes."""
    client = cluster.async_client(url)
    try:
        await retention.trim(client, stream, point)
        await client.xtrim(stream, minid=f"{point[0]}-{point[1]}", approximate=False)
    finally:
        await client.aclose()


def _future_cursor() -> str:
    return cursor.encode(KEYSPACE.shards, [(4_000_000_000_000, 0)] * (KEYSPACE.shards + 1))


@pytest.mark.parametrize(
    ("last_event_id", "reason"),
    [
        ("garbage!", "malformed"),
        (cursor.encode(8, [(1, 0)] * 9), "8 shards"),
        ("FUTURE", "retention window, or unknown"),
    ],
)
def test_an_unknown_cursor_gets_a_reset_then_live_events(
    live: LiveServer, api: httpx.Client, last_event_id: str, reason: str
) -> None:
    if last_event_id == "FUTURE":
        last_event_id = _future_cursor()
    ok(api.post("/api/v1/segments", json={"slug": "A"}))
    with FeedReader(live.url, last_event_id=last_event_id) as reader:
        reader.live()
        add(api, 5, "A")
        reset, change = reader.wait_events(2)
    assert reset.kind == "reset" and reason in reset.data["reason"]
    assert change.kind == "change" and change.data["user_id"] == 5
    # The reset's id is a cursor that resumes.
    with FeedReader(live.url, last_event_id=reset.cursor) as again:
        assert [e.data.get("user_id") for e in again.wait_events(1)] == [5]


def test_heartbeat_carries_the_cursor_past_filtered_events(
    clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "HEARTBEAT_S", 0.2)
    app = create_app(Settings(redis_url=clean_redis_url))
    with LiveServer(app) as server, httpx.Client(base_url=server.url) as http:
        ok(http.post("/api/v1/segments", json={"slug": "A"}))
        other = next(u for u in range(2, 100) if KEYSPACE.shard_of(u) != KEYSPACE.shard_of(1))
        with FeedReader(server.url, params={"user_id": "1"}) as reader:
            reader.live()
            add(http, other, "A")  # filtered out
            wait_until(lambda: reader.comments.count("heartbeat") >= 2, what="heartbeats")
            positions = cursor.decode(reader.cursor, KEYSPACE.shards)
        with cluster.client(clean_redis_url, decode_responses=True) as plain:
            last = plain.xinfo_stream(for_user(other).events)["last-generated-id"]
        assert positions[1 + KEYSPACE.shard_of(other)] >= parse_id(last)
        assert reader.events == []


def test_a_slow_subscriber_is_disconnected(
    clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that stops reading is dropped by the hub once its buffer is full;
    when it reads again, the response ends (it would resume with its cursor)."""
    monkeypatch.setattr(feed, "MAX_BUFFERED", 50)
    monkeypatch.setattr(feed, "READ_COUNT", 10)  # so the buffer's floor is 2 * 10 * 17
    app = create_app(Settings(redis_url=clean_redis_url))
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        hub = app.state.feed
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /api/v1/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            wait_until(lambda: server.in_loop(lambda: len(hub.subscribers)) == 1, what="subscriber")
            ok(http.post("/api/v1/segments", json={"slug": "ALL", "percent": 100}))
            users = 30_000  # ~7 MB of events: more than the socket buffers hold
            for first in range(1, users, 10_000):
                ids = list(range(first, first + 10_000))
                ok(http.post("/api/v1/users", json={"user_ids": ids}))
            wait_until(lambda: server.in_loop(lambda: len(hub.subscribers)) == 0, what="drop")
            sock.settimeout(30)
            received = bytearray()
            while chunk := sock.recv(65536):
                received += chunk
        finally:
            sock.close()
    assert b"200 OK" in received[:100]
    assert 0 < received.count(b"event: change") < users  # cut short, not slowly served


def test_subscribers_share_one_reader(live: LiveServer, api: httpx.Client) -> None:
    hub = live.app.state.feed
    with readers(live.url, 5) as subscribers:
        for reader in subscribers:
            reader.live()
        assert live.in_loop(lambda: len(hub.subscribers)) == 5
        ok(api.post("/api/v1/segments", json={"slug": "A"}))
        for uid in range(1, 11):
            add(api, uid, "A")
        got = [reader.wait_events(11) for reader in subscribers]
    assert all(g == got[0] for g in got)  # the same events, with the same cursors
    expected_readers = 1 if not hub.cluster else len(hub.streams)
    assert live.in_loop(lambda: hub.readers) == expected_readers


def test_resume_across_an_api_restart(clean_redis_url: str, client: Any) -> None:
    """``segments serve`` stopped (SIGTERM, ends its feeds at once) and started again:
    a cursor of the old process resumes on the new one; writes made while no API
    ran (through another app on the same Redis) are replayed."""
    env = {**os.environ, "REDIS_URL": clean_redis_url}
    ok(client.post("/api/v1/segments", json={"slug": "A"}))
    with ServeProcess(env) as first, httpx.Client(base_url=first.url) as http:
        reader = FeedReader(first.url).live()
        for uid in range(1, 21):
            add(http, uid, "A")
        head = reader.wait_events(20)
        assert first.stop() is not None  # SIGTERM was enough
        # The process ended the open feed itself (a response cut by uvicorn's
        # shutdown timeout would be an incomplete chunked body: an error here).
        assert reader.ended.wait(WAIT_S) and reader.error is None
        reader.close()
    for uid in range(21, 41):
        ok(client.post(f"/api/v1/users/{uid}/segments", json={"add": ["A"]}))
    with (
        ServeProcess(env) as second,
        httpx.Client(base_url=second.url) as http,
        FeedReader(second.url, last_event_id=head[9].cursor) as resumed,
    ):
        for uid in range(41, 46):
            add(http, uid, "A")
        rest = resumed.wait_events(35)
        assert len(resumed.events) == 35
    assert sorted(e.data["user_id"] for e in head[:10] + rest) == list(range(1, 46))


@pytest.mark.slow
def test_two_workers(clean_redis_url: str) -> None:
    """``--workers 2``: each process has its own hub; every subscriber gets every
    event, and a cursor resumes whichever worker takes the reconnection."""
    with (
        ServeProcess({**os.environ, "REDIS_URL": clean_redis_url}, workers=2) as server,
        httpx.Client(base_url=server.url) as http,
        readers(server.url, 6) as subscribers,
    ):
        for reader in subscribers:
            reader.live()
        ok(http.post("/api/v1/segments", json={"slug": "A"}))
        for uid in range(1, 31):
            add(http, uid, "A")
        got = [reader.wait_events(31) for reader in subscribers]
        for uid in range(1, 31):
            ok(http.post(f"/api/v1/users/{uid}/segments", json={"remove": ["A"]}))
        resumed = []
        for events in got:
            with FeedReader(server.url, last_event_id=events[15].cursor) as again:
                resumed.append(again.wait_events(45))
                assert len(again.events) == 45
    full = per_user(got[0]) | {}
    for events, rest in zip(got, resumed, strict=True):
        assert per_user(events) == full
        tail = per_user(events[:16] + rest)
        assert {u: [d["operation"] for d in ds] for u, ds in tail.items() if u} == {
            u: ["add", "remove"] for u in range(1, 31)
        }


def test_shard_count_is_the_deployments(clean_redis_url: str) -> None:
    """Cursors follow the deployment's shards (stored in Redis), not a constant."""
    with cluster.client(clean_redis_url) as plain:
        plain.set(GLOBAL.shards, 4)
    app = create_app(Settings(redis_url=clean_redis_url))
    with LiveServer(app) as server:
        assert app.state.feed.streams == Keyspace(4).history_streams()
        with FeedReader(server.url) as reader:
            assert len(cursor.decode(reader.live().cursor, 4)) == 5


# --- retention: the archiver keeps the window --------------------------------------------------


async def test_the_archiver_keeps_the_retention_window(
    redis: Any, clean_redis_url: str, db: str
) -> None:
    """Archived entries younger than the window stay, and no trim mark is set (a
    cursor from before them resumes); with no window they are trimmed, each
    stream's mark recorded first. (Approximate trims free whole macro-nodes
    only: with a few entries per stream the mark is set and nothing goes.)"""
    from service.reports import wait_until_archived
    from tests.support.history import Event, add_events, fast_config, running_archiver

    now = int(time.time() * 1000)
    keys = await add_events(redis, [Event(user_id=u, segment="A", ts_ms=now) for u in range(1, 41)])
    streams = KEYSPACE.history_streams()
    lengths = {s: await redis.xlen(s) for s in streams}
    first = {s: min((ms, seq) for st, ms, seq in keys if st == s) for s in {k[0] for k in keys}}
    start = [(0, 0)] * len(streams)  # before every entry: resumable while nothing is trimmed
    hub = _hub(redis)

    async def resumable() -> bool:
        return (await feed.resume_point(hub, EventFilter(), cursor.encode(16, start))).reset is None

    async with running_archiver(clean_redis_url, db, fast_config(retention_ms=600_000)):
        assert (await wait_until_archived(redis, streams, 20)).caught_up
        await asyncio.sleep(0.5)  # several trim intervals (100 ms)
    assert {s: await redis.xlen(s) for s in streams} == lengths
    assert await resumable()
    assert await redis.zcard(GLOBAL.trimmed) == 0
    async with running_archiver(clean_redis_url, db, fast_config(retention_ms=0)):
        await _until(lambda: _all_marked(redis, list(first)), "the trims")
    marks = dict(await redis.zrange(GLOBAL.trimmed, 0, -1, withscores=True))
    assert all(marks[s.encode()] >= ms for s, (ms, _) in first.items())


async def _all_marked(redis: Any, streams: list[str]) -> bool:
    marked = {m.decode() for m in await redis.zrange(GLOBAL.trimmed, 0, -1)}
    return marked >= set(streams)


async def _until(check: Any, what: str) -> None:
    give_up = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _hub(redis: Any) -> feed.FeedHub:
    return feed.FeedHub(redis, KEYSPACE, cluster=False)


# --- Redis Cluster: a failover under a subscriber ---------------------------------------------


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("TEST_REDIS_CLUSTER") != "1",
    reason="cluster failover tests run with TEST_REDIS_CLUSTER=1 (.ci/run's cluster step)",
)
def test_a_failover_loses_no_event() -> None:
    """A master of the cluster hands over to its replica (CLUSTER FAILOVER) while a
    subscriber reads: the process's reader of that stream fails, the subscriber is
    ended and resumes with its cursor; every change is delivered exactly once."""
    from segments_client import Client

    from tests.support.cluster import RedisClusterServers

    with (
        RedisClusterServers() as servers,
        LiveServer(create_app(Settings(redis_url=servers.url))) as server,
        Client(server.url, timeout=30) as api,
    ):
        api.create_segment("A")
        reader = FeedReader(server.url).live()
        for uid in range(1, 41):
            api.change(uid, add=["A"])
        target = servers.master_of_slot(key_slot(for_user(1).events.encode()))
        servers.failover(servers.replicas_of(target)[0])
        for uid in range(1, 41):
            api.change(uid, remove=["A"])  # retried through the 503s of the switch-over
        received: list[Event] = []

        def delivered(current: FeedReader) -> bool:
            return len(received) + len(current.events) >= 80 or current.ended.is_set()

        connections = 1
        while True:
            wait_until(functools.partial(delivered, reader), what="the events")
            received.extend(reader.events)
            reader.close()
            if not reader.ended.is_set() or len(received) >= 80:
                break
            reader = FeedReader(server.url, last_event_id=reader.cursor)
            connections += 1
    assert connections > 1  # the failover ended the subscription at least once
    changes = [(e.data["user_id"], e.data["operation"]) for e in received if e.kind == "change"]
    assert sorted(changes) == sorted((u, op) for u in range(1, 41) for op in ("add", "remove"))
    assert [e for e in received if e.kind == "reset"] == []
