"""The archiver against real Redis and PostgreSQL, run in the test's event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from redis.asyncio import Redis

from archiver import worker
from segments_core.keys import GLOBAL, dead_letter_key
from segments_core.streams import GROUP, archiver_lag, format_id, group_state, trim_floor
from service.reports import wait_until_archived
from tests.support import for_user, history_streams
from tests.support.history import (
    Event,
    add_events,
    add_lifecycle,
    archived,
    fast_config,
    prepare_database,
    running_archiver,
)

NOW_MS = int(time.time() * 1000)


async def caught_up(redis: Redis, timeout_s: float = 20.0) -> None:
    result = await wait_until_archived(redis, history_streams(), timeout_s)
    assert result.caught_up, "the archiver did not catch up"


def events(n: int, start_ms: int = NOW_MS - 60_000, users: int = 500) -> list[Event]:
    reasons = ("manual", "ttl", "percent", "segment_deleted", "user_deleted")
    return [
        Event(
            user_id=1 + i % users,
            segment=f"SEG_{i % 7}",
            operation="add" if i % 3 else "remove",
            ts_ms=start_ms + i,
            reason=reasons[i % 5],
        )
        for i in range(n)
    ]


async def test_archives_every_event_once_with_its_fields(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    deadline = NOW_MS + 3_600_000
    special = Event(user_id=2**63 - 1, segment="A.b-c_9", ts_ms=NOW_MS - 5, deadline_ms=deadline)
    keys = await add_events(redis, [*events(2000), special])
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT user_id, segment, operation, reason, ts, deadline FROM history"
            " WHERE user_id = %s",
            (2**63 - 1,),
        ).fetchone()
    assert row == (
        2**63 - 1,
        "A.b-c_9",
        "add",
        "manual",
        dt.datetime.fromtimestamp((NOW_MS - 5) / 1000, dt.UTC),
        dt.datetime.fromtimestamp(deadline / 1000, dt.UTC),
    )


async def test_progress_is_recorded_with_each_batch(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    keys = await add_events(redis, events(300))
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
    last: dict[str, tuple[int, int]] = {}
    for stream, ms, seq in keys:
        last[stream] = max(last.get(stream, (0, 0)), (ms, seq))
    with psycopg.connect(db) as conn:
        progress = conn.execute(
            "SELECT stream, last_entry_ms, last_entry_seq, archived FROM archive_progress"
        ).fetchall()
    assert {s: (ms, seq) for s, ms, seq, _ in progress} == last
    assert sum(n for *_, n in progress) == len(keys)


async def test_lifecycle_events_are_archived(redis: Redis, clean_redis_url: str, db: str) -> None:
    await add_lifecycle(redis, "created", "SEG", NOW_MS - 30, 7, p="", desc='first, "quoted"')
    await add_lifecycle(redis, "changed", "SEG", NOW_MS - 20, 7, p="12.5", desc="x")
    await add_lifecycle(redis, "deleted", "SEG", NOW_MS - 10, 7)
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT operation, segment, segment_id, percent::text, description"
            " FROM segment_events ORDER BY ts"
        ).fetchall()
    assert rows == [
        ("created", "SEG", 7, None, 'first, "quoted"'),
        ("changed", "SEG", 7, "12.50", "x"),
        ("deleted", "SEG", 7, None, None),
    ]


async def test_redelivered_entries_are_not_duplicated(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    keys = await add_events(redis, events(1000))
    no_trim = fast_config(trim=False)
    async with running_archiver(clean_redis_url, db, no_trim):
        await caught_up(redis)
    # Deliver everything again, as after a crash between commit and XACK.
    for stream in history_streams():
        await redis.xgroup_setid(stream, GROUP, "0")
    async with running_archiver(clean_redis_url, db, no_trim):
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}


async def test_a_malformed_entry_is_dead_lettered_without_blocking_the_rest(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    stream = for_user(1).events
    good_before = await add_events(redis, [Event(user_id=1, segment="S", ts_ms=NOW_MS - 3)])
    bad_id = await redis.xadd(
        stream, {"u": "1", "s": "S", "o": "explode", "t": str(NOW_MS), "r": "manual"}
    )
    good_after = await add_events(redis, [Event(user_id=1, segment="S", ts_ms=NOW_MS - 1)])
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in good_before + good_after}
    dead = await redis.xrange(dead_letter_key(stream))
    assert len(dead) == 1
    fields = dead[0][1]
    assert fields[b"dl_id"] == bad_id and fields[b"o"] == b"explode"
    assert b"'o'" in fields[b"dl_error"]


async def test_a_row_postgres_rejects_is_retried_then_dead_lettered(
    redis: Redis, clean_redis_url: str, fresh_pg_url: str
) -> None:
    db = prepare_database(fresh_pg_url)
    with psycopg.connect(db, autocommit=True) as conn:
        # A constraint only this test has: PostgreSQL rejects one value.
        conn.execute("ALTER TABLE history ADD CONSTRAINT no_poison CHECK (segment <> 'POISON')")
    good = events(50)
    poison = Event(user_id=good[0].user_id, segment="POISON", ts_ms=NOW_MS - 10)
    keys = await add_events(redis, [*good[:25], poison, *good[25:]])
    cfg = fast_config(max_attempts=3)
    async with running_archiver(clean_redis_url, db, cfg):
        await caught_up(redis)
    poison_key = keys[25]
    assert archived(db) == {k: 1 for k in keys if k != poison_key}
    dead = await redis.xrange(dead_letter_key(poison_key[0]))
    assert [d[1][b"s"] for d in dead] == [b"POISON"]
    assert b"rejected 3 times" in dead[0][1][b"dl_error"]
    assert b"no_poison" in dead[0][1][b"dl_error"]


async def test_a_restarted_archiver_drains_its_own_pending_entries_first(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    keys = await add_events(redis, events(400))
    # Consumer "same-name" takes every entry and dies before writing any.
    for stream in history_streams():
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await redis.xreadgroup(GROUP, "same-name", {stream: ">"}, count=10_000)
    # Claiming is off (a day of idle time): only draining its own can work.
    cfg = fast_config("same-name", claim_idle_ms=86_400_000)
    async with running_archiver(clean_redis_url, db, cfg):
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}


async def test_entries_of_a_dead_consumer_are_claimed(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    keys = await add_events(redis, events(400))
    for stream in history_streams():
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await redis.xreadgroup(GROUP, "dead-one", {stream: ">"}, count=10_000)
    cfg = fast_config("alive", claim_idle_ms=300)
    async with running_archiver(clean_redis_url, db, cfg):
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}


async def test_two_archivers_share_the_streams(
    redis: Redis, clean_redis_url: str, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: Counter[str] = Counter()  # rows committed, by the archiver that committed them
    write = worker.StreamWorker._write

    async def counted(self: worker.StreamWorker, rows: list[Any]) -> Any:
        result = await write(self, rows)
        written[self._cfg.consumer] += len(result.written)
        return result

    monkeypatch.setattr(worker.StreamWorker, "_write", counted)
    keys: list[tuple[str, int, int]] = []
    async with (
        running_archiver(clean_redis_url, db, fast_config("one", batch_size=50)),
        running_archiver(clean_redis_url, db, fast_config("two", batch_size=50)),
    ):
        for chunk in range(10):
            keys += await add_events(redis, events(300, start_ms=NOW_MS - 50_000 + chunk * 300))
            await asyncio.sleep(0.02)
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}
    # Both archived a share, and together everything (a row twice only if claimed).
    assert written["one"] > 0 and written["two"] > 0, written
    assert written["one"] + written["two"] >= len(keys)
    consumers = {
        c["name"]
        for s in history_streams()
        for c in await redis.xinfo_consumers(s, GROUP)
        if c["pending"] == 0
    }
    assert {b"one", b"two"} <= consumers


async def test_trimming_never_removes_an_unarchived_entry(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    """Archiver paused mid-batch (PostgreSQL table locked) while events keep
    coming and the streams are trimmed as hard as allowed: after the pause,
    every event is in PostgreSQL exactly once, so none was trimmed unarchived."""
    keys = await add_events(redis, events(500, start_ms=NOW_MS - 40_000))
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
        locker = await psycopg.AsyncConnection.connect(db)
        await locker.execute("LOCK TABLE history IN ACCESS EXCLUSIVE MODE")
        try:
            for i in range(20):  # ~1 s of events flowing while paused
                keys += await add_events(redis, events(50, start_ms=NOW_MS - 30_000 + i * 50))
                for stream in history_streams():
                    floor = await trim_floor(redis, stream)
                    # Exact trim, not approximate: the strictest test of the floor.
                    await redis.xtrim(stream, minid=format_id(floor), approximate=False)
                await asyncio.sleep(0.05)
            # Paused: nothing new is archived, every new entry still in its stream.
            in_streams = sum([await redis.xlen(s) for s in history_streams()])
            assert in_streams >= 1000
        finally:
            await locker.rollback()
            await locker.close()
        await caught_up(redis)
    assert archived(db) == {k: 1 for k in keys}
    # And once archived, the archiver trims the streams itself.
    assert sum([await redis.xlen(s) for s in history_streams()]) < len(keys)


async def test_lag_and_the_wait_for_the_archiver(
    redis: Redis, clean_redis_url: str, db: str
) -> None:
    keys = await add_events(redis, events(100))
    lag = await archiver_lag(redis, history_streams())
    assert lag.max_lag_s > 0 and lag.pending == 0
    assert not all(s.group for s in lag.streams if s.stream != GLOBAL.events)
    waited = await wait_until_archived(redis, history_streams(), 0.2)
    assert not waited.caught_up and waited.waited_s >= 0.2 and waited.behind_s > 0
    async with running_archiver(clean_redis_url, db):
        await caught_up(redis)
        lag = await archiver_lag(redis, history_streams())
        assert lag.max_lag_s == 0 and lag.pending == 0
        # Right after a change, the wait returns once that change is archived.
        (key,) = await add_events(redis, [Event(user_id=77, segment="LAST", ts_ms=NOW_MS)])
        assert (await wait_until_archived(redis, history_streams(), 10)).caught_up
        assert archived(db)[key] == 1
    assert len(archived(db)) == len(keys) + 1
    state = await group_state(redis, key[0])
    assert state.archived_through((key[1], key[2]))


async def test_lag_counts_pending_entries(redis: Redis, clean_redis_url: str, db: str) -> None:
    await add_events(redis, [Event(user_id=1, segment="S", ts_ms=NOW_MS - i) for i in range(8)])
    stream = for_user(1).events
    await redis.xgroup_create(stream, GROUP, id="0")
    await redis.xreadgroup(GROUP, "slow", {stream: ">"}, count=5)
    lag = await archiver_lag(redis, history_streams())
    (mine,) = [s for s in lag.streams if s.stream == stream]
    assert mine.pending == 5 and mine.group and mine.lag_s > 0
