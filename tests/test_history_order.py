"""History time comes from Redis (issue 9, "Wrong data"; SPEC §3).

Every script reads the Redis server's clock itself, so one user's events,
ordered by timestamp and then by stream entry id (the report's order), are
in exactly the order the changes happened, whatever the number of API
processes and their clocks. Deadlines from a ttl, "is this deadline in the
future" and the sweeper's "due" use that clock too. Tests that drive time by
hand use the test build of the scripts, which production cannot reach.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from segments_core.redis_client import connect
from service.api.users import apply_change
from service.errors import ScriptArgumentError
from service.models import AddItem as AddBody
from service.models import ChangeRequest
from service.scripts import NOW, load_scripts
from service.store import AddItem, Store
from tests.support import for_user
from tests.support.history import app_with_archiver

KEY = b"history-order-signing-key-0123"
HOUR_MS = 3_600_000


async def redis_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture
async def production_store(clean_redis_url: str) -> AsyncIterator[Store]:
    """The store as production builds it: no clock, the production scripts."""
    redis = await connect(clean_redis_url)
    try:
        yield Store(redis)
    finally:
        await redis.aclose()


@pytest.fixture
def skewed_api_clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Moves this process's wall clock by the given ms (an API host whose
    clock is off); the Redis server's clock is untouched."""

    def skew(ms: int) -> None:
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() + ms * 1_000_000)

    return skew


def _events(entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    return [fields for _, fields in entries]


# --- the two builds of the scripts -------------------------------------------------


async def test_the_production_scripts_refuse_an_explicit_time(production_store: Store) -> None:
    store = production_store
    get = store.scripts["getMemberships"]
    assert get.clock is None and get.time_arg() == ""
    k = for_user(5)
    keys = [k.user(5), k.users, k.seg_slug, k.seg_pct, k.counts, k.events]
    with pytest.raises(ScriptArgumentError, match="explicit time"):
        await get(store.conn, keys, [5, 1_700_000_000_000])
    assert await store.redis.exists(k.user(5), k.users) == 0  # nothing was changed
    assert await get(store.conn, keys, [5, NOW]) == []


def test_only_the_test_build_reads_a_time_and_it_is_another_script() -> None:
    production, test = load_scripts(), load_scripts(clock=lambda: 1)
    for name, script in production.items():
        if "scriptTime(" not in script.source:
            assert name == "finishRollout"  # the one script that needs no time
            continue
        assert "\nlocal TEST_CLOCK = false\n" in script.source
        assert "TEST_CLOCK = true" not in script.source
        assert "TEST_CLOCK = true" in test[name].source
        assert test[name].sha != script.sha
        assert "ARGV" in script.source and "test build" in script.source  # header says so


# --- stamps, ttls and "due" on the Redis server's clock ----------------------------


async def test_events_carry_the_redis_clock_not_the_api_hosts(
    production_store: Store, skewed_api_clock: Any
) -> None:
    store, redis = production_store, production_store.redis
    skewed_api_clock(-HOUR_MS)  # this API host is an hour behind
    before = await redis_ms(redis)
    await store.create_segment("S", "", 0)
    await store.change_user_segments(9, [AddItem("S", 0)], [])
    await store.change_user_segments(9, [], ["S"])
    await store.delete_segment("S")
    after = await redis_ms(redis)
    stamps = [int(e["t"]) for e in _events(await redis.xrange(for_user(9).events))]
    stamps += [int(e["t"]) for e in _events(await redis.xrange("{g}:events"))]
    assert len(stamps) == 4
    assert all(before <= t <= after for t in stamps), (before, stamps, after)


async def test_a_ttl_counts_from_the_redis_clock(
    production_store: Store, skewed_api_clock: Any
) -> None:
    store = production_store
    await store.create_segment("T", "", 0)
    skewed_api_clock(-HOUR_MS)
    before = await redis_ms(store.redis)
    change = ChangeRequest(add=[AddBody(slug="T", ttl_seconds=600)])
    await apply_change(store, 3, change)
    after = await redis_ms(store.redis)
    (membership,) = await store.user_segments(3)
    assert before + 600_000 <= membership.deadline_ms <= after + 600_000


async def test_future_and_due_are_judged_on_the_redis_clock(
    production_store: Store, skewed_api_clock: Any
) -> None:
    """An API host an hour ahead: a deadline ten minutes ahead on the Redis
    clock is accepted, read and not swept; one already past on the Redis
    clock is refused, whatever the host thinks."""
    store = production_store
    await store.create_segment("D", "", 0)
    skewed_api_clock(HOUR_MS)
    soon = await redis_ms(store.redis) + 600_000
    expires = dt.datetime.fromtimestamp(soon / 1000, dt.UTC)
    await apply_change(store, 4, ChangeRequest(add=[AddBody(slug="D", expires_at=expires)]))
    await store.sweep()
    assert [m.slug for m in await store.user_segments(4)] == ["D"]
    past = dt.datetime.fromtimestamp((await redis_ms(store.redis) - 1000) / 1000, dt.UTC)
    with pytest.raises(Exception, match="not in the future") as refused:
        await apply_change(store, 5, ChangeRequest(add=[AddBody(slug="D", expires_at=past)]))
    assert getattr(refused.value, "status_code", None) == 400
    assert await store.user_segments(5) == []


# --- the regression: concurrent writers on one user --------------------------------

WRITERS = 16
TOGGLES = 50
USER = 77


def _toggle(redis_url: str, writer: int, start: threading.Barrier) -> None:
    """One API process: its own event loop, connection and store (no clock)."""

    async def run() -> None:
        redis = await connect(redis_url)
        store = Store(redis)
        try:
            start.wait()
            for i in range(TOGGLES):
                add = (i + writer) % 2 == 0
                change = ChangeRequest(add=["FLIP"]) if add else ChangeRequest(remove=["FLIP"])
                await apply_change(store, USER, change)
        finally:
            await redis.aclose()

    asyncio.run(run())


@pytest.fixture
def history_app(clean_redis_url: str, pg_url: str) -> Iterator[TestClient[Any]]:
    with app_with_archiver(clean_redis_url, pg_url, KEY) as client:
        yield client


def _report_rows(client: TestClient[Any], period: str) -> list[list[str]]:
    link = client.get("/api/v1/history/report", params={"period": period, "user_id": USER})
    assert link.status_code == 200, link.text
    download = client.get(link.json()["url"])
    assert download.status_code == 200, download.text
    rows = list(csv.reader(io.StringIO(download.text, newline="")))
    return rows[1:]


def test_sixteen_concurrent_writers_on_one_user_replay_exactly(
    history_app: TestClient[Any], clean_redis_url: str
) -> None:
    """16 writers (each an API process of its own) toggle one segment of one
    user; the report, in its order, replays exactly: never a remove of an
    absent segment, never an add of a present one, ending in Redis's state."""
    client = history_app
    assert client.post("/api/v1/segments", json={"slug": "FLIP"}).status_code == 201
    started = dt.datetime.now(dt.UTC)
    start = threading.Barrier(WRITERS)
    threads = [
        threading.Thread(target=_toggle, args=(clean_redis_url, w, start))
        for w in range(WRITERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)

    periods = sorted({started.strftime("%Y-%m"), dt.datetime.now(dt.UTC).strftime("%Y-%m")})
    rows = [row for period in periods for row in _report_rows(client, period)]
    assert len(rows) > WRITERS  # the writers did interleave into real changes
    present = False
    for n, (user_id, slug, operation, _, reason) in enumerate(rows):
        assert (user_id, slug, reason) == (str(USER), "FLIP", "manual")
        assert operation == ("remove" if present else "add"), f"row {n} of {len(rows)}"
        present = not present
    final = client.get(f"/api/v1/users/{USER}/segments").json()["segments"]
    assert present == ("FLIP" in final)
