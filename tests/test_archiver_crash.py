"""Real archiver processes, SIGKILLed at the worst moments, and PostgreSQL
stopped under them: afterwards every event has exactly one history row."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from segments_core.streams import GROUP, archiver_lag
from service.reports import wait_until_archived
from tests.support import history_streams
from tests.support.history import (
    Event,
    EventKey,
    add_events,
    archived,
    key_of,
    prepare_database,
    spawn_archiver,
)

pytestmark = pytest.mark.slow

NOW_MS = int(time.time() * 1000)


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """``spawn_archiver``; whatever it started is killed after the test, even a failed one."""
    spawned: list[subprocess.Popen[bytes]] = []

    def tracked(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = spawn_archiver(*args, **kwargs)
        spawned.append(proc)
        return proc

    yield tracked
    for proc in spawned:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def events(n: int, offset: int = 0) -> list[Event]:
    return [
        Event(user_id=1 + (offset + i) % 997, segment=f"S{i % 5}", ts_ms=NOW_MS - 100_000 + i)
        for i in range(n)
    ]


async def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    return await asyncio.to_thread(proc.wait, timeout_s)


async def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 30) == 0, "the archiver did not stop cleanly on SIGTERM"


async def caught_up(redis: Redis, log: Path, timeout_s: float = 60.0) -> None:
    result = await wait_until_archived(redis, history_streams(), timeout_s)
    assert result.caught_up, "archiver did not catch up; its log:\n" + log.read_text()[-3000:]


async def holds_entries(redis: Redis, consumer: str, proc: subprocess.Popen[bytes]) -> None:
    """Waits until ``consumer`` has read entries (or its process has ended)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for stream in history_streams():
            with contextlib.suppress(ResponseError):  # no group on this stream yet
                consumers = await redis.xinfo_consumers(stream, GROUP)
                if any(c["name"] in (consumer, consumer.encode()) for c in consumers):
                    return
        await asyncio.sleep(0.05)


async def pending_of(redis: Redis, consumer: str) -> list[EventKey]:
    out: list[EventKey] = []
    for stream in history_streams():
        entries = await redis.xpending_range(stream, GROUP, "-", "+", 100_000, consumer)
        out += [key_of(stream, e["message_id"]) for e in entries]
    return out


@pytest.mark.parametrize("point", ["after_read", "after_copy", "before_commit", "after_commit"])
async def test_killed_at_the_worst_moment_then_restarted(
    point: str, redis: Redis, clean_redis_url: str, db: str, tmp_path: Path, spawn: Spawn
) -> None:
    keys = await add_events(redis, events(3000))
    log = tmp_path / "archiver.log"
    crashing = spawn(
        clean_redis_url,
        db,
        "crashy",
        {"SEGMENTS_ARCHIVER_CRASH_AT": f"{point}:3", "SEGMENTS_ARCHIVER_BATCH_SIZE": "100"},
        log,
    )
    assert await wait_exit(crashing) == -signal.SIGKILL, log.read_text()[-3000:]

    left = await pending_of(redis, "crashy")
    assert left, "the crash left nothing pending: it did not hit mid-batch"
    written = archived(db)
    if point == "after_commit":
        # The window this point exists for: committed, not acknowledged.
        assert any(k in written for k in left)
    elif point in ("after_copy", "before_commit"):
        # The open transaction died with the process.
        assert sum(written.values()) < len(keys)

    # Restarted under the same name, it first drains its own pending entries.
    restarted = spawn(
        clean_redis_url, db, "crashy", {"SEGMENTS_ARCHIVER_CLAIM_IDLE_MS": "86400000"}, log
    )
    try:
        await caught_up(redis, log)
    finally:
        await stop(restarted)
    assert archived(db) == {k: 1 for k in keys}
    assert await pending_of(redis, "crashy") == []


async def test_two_archivers_one_killed_mid_batch(
    redis: Redis, clean_redis_url: str, db: str, tmp_path: Path, spawn: Spawn
) -> None:
    keys = await add_events(redis, events(4000))
    log = tmp_path / "archivers.log"
    small = {"SEGMENTS_ARCHIVER_BATCH_SIZE": "100", "SEGMENTS_ARCHIVER_CLAIM_IDLE_MS": "500"}
    # The victim dies at its first batch, and the survivor starts once the
    # victim holds entries: on a busy machine a survivor started at once could
    # take every entry before the slower victim read any, and it never die.
    victim = spawn(
        clean_redis_url, db, "victim", {**small, "SEGMENTS_ARCHIVER_CRASH_AT": "after_copy:1"}, log
    )
    await holds_entries(redis, "victim", victim)
    survivor = spawn(clean_redis_url, db, "survivor", small, log)
    try:
        # Events keep coming while one archiver dies and the other takes over.
        for i in range(10):
            keys += await add_events(redis, events(100, offset=4000 + i * 100))
            await asyncio.sleep(0.05)
        assert await wait_exit(victim) == -signal.SIGKILL, log.read_text()[-3000:]
        await caught_up(redis, log)
    finally:
        await stop(survivor)
    assert archived(db) == {k: 1 for k in keys}
    assert await pending_of(redis, "victim") == []
    assert "claimed" in log.read_text(), "the survivor never claimed the victim's entries"


async def test_postgres_down_while_events_flow(
    redis: Redis, clean_redis_url: str, private_pg: Any, tmp_path: Path, spawn: Spawn
) -> None:
    db = prepare_database(private_pg.url)
    log = tmp_path / "archiver.log"
    proc = spawn(clean_redis_url, db, "steady", {}, log)
    try:
        keys = await add_events(redis, events(500))
        await caught_up(redis, log)

        await asyncio.to_thread(private_pg.stop)
        for i in range(10):
            keys += await add_events(redis, events(200, offset=500 + i * 200))
            await asyncio.sleep(0.1)
        lag = await archiver_lag(redis, history_streams())
        assert lag.max_lag_s > 0, "events were archived with PostgreSQL down?"
        assert not (await wait_until_archived(redis, history_streams(), 0.5)).caught_up

        await asyncio.to_thread(private_pg.start)
        await caught_up(redis, log)
    finally:
        await stop(proc)
    assert archived(db) == {k: 1 for k in keys}
    assert "failed" in log.read_text(), "the archiver never met PostgreSQL down"
