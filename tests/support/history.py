"""Helpers for tests that exercise the archiver: events written straight to
the streams (per the contract in docs/design.md), an archiver run in-process
or as a real process, and what PostgreSQL holds afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from redis.asyncio import Redis

from archiver import config as config_module
from archiver import worker
from archiver.config import ArchiverConfig
from archiver.migrate import migrate
from segments_core.keys import GLOBAL
from tests.support import for_user

EventKey = tuple[str, int, int]
"""(stream, entry ms, entry seq): an event's identity."""

FAST = {
    "SEGMENTS_ARCHIVER_BLOCK_MS": "100",
    "SEGMENTS_ARCHIVER_CLAIM_INTERVAL_MS": "200",
    "SEGMENTS_ARCHIVER_TRIM_INTERVAL_MS": "100",
    # Trim as soon as archived: these tests check the archive, not the feed's window.
    "SEGMENTS_ARCHIVER_RETENTION_MS": "0",
    "SEGMENTS_ARCHIVER_RETRY_MIN_S": "0.05",
    "SEGMENTS_ARCHIVER_RETRY_MAX_S": "0.5",
}
"""Knobs for tests: short waits everywhere, so tests spend no time idle."""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    user_id: int
    segment: str
    operation: str = "add"
    ts_ms: int
    reason: str = "manual"
    deadline_ms: int | None = None

    def fields(self) -> dict[str, str]:
        out = {
            "u": str(self.user_id),
            "s": self.segment,
            "o": self.operation,
            "t": str(self.ts_ms),
            "r": self.reason,
        }
        if self.deadline_ms is not None:
            out["d"] = str(self.deadline_ms)
        return out


def key_of(stream: str | bytes, entry_id: str | bytes) -> EventKey:
    s = stream.decode() if isinstance(stream, bytes) else stream
    e = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = e.partition("-")
    return s, int(ms), int(seq)


async def add_events(redis: Redis, events: Iterable[Event]) -> list[EventKey]:
    """XADD each event to its user's shard stream, as the Lua scripts do."""
    pipe = redis.pipeline(transaction=False)
    streams: list[str] = []
    for event in events:
        stream = for_user(event.user_id).events
        streams.append(stream)
        pipe.xadd(stream, event.fields())  # type: ignore[arg-type]
    ids = await pipe.execute()
    return [key_of(s, i) for s, i in zip(streams, ids, strict=True)]


async def add_lifecycle(
    redis: Redis, operation: str, slug: str, ts_ms: int, segment_id: int, **extra: str
) -> EventKey:
    fields = {"o": operation, "s": slug, "t": str(ts_ms), "id": str(segment_id), **extra}
    entry_id = await redis.xadd(GLOBAL.events, fields)  # type: ignore[arg-type]
    return key_of(GLOBAL.events, entry_id)


def fast_config(name: str = "test", **overrides: Any) -> ArchiverConfig:
    cfg = config_module.load({"SEGMENTS_ARCHIVER_NAME": name, **FAST})
    return msgspec.structs.replace(cfg, **overrides)


@contextlib.asynccontextmanager
async def running_archiver(
    redis_url: str, database_url: str, config: ArchiverConfig | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    """An archiver in this event loop for the ``with`` block; stopped cleanly after."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        worker.run(redis_url, database_url, config or fast_config(), stop), name="archiver"
    )
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.contextmanager
def archiver_in_thread(
    redis_url: str, database_url: str, config: ArchiverConfig | None = None
) -> Iterator[None]:
    """An archiver on its own thread and event loop, for the ``with`` block.

    For tests whose own loop blocks (Litestar's test clients call the app
    synchronously, even the async one): the archiver keeps working meanwhile.
    """
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            loop.run_until_complete(
                worker.run(redis_url, database_url, config or fast_config(), stop)
            )
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="archiver", daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    if failure:
        raise failure[0]


@contextlib.contextmanager
def app_with_archiver(redis_url: str, database_url: str, signing_key: bytes) -> Iterator[Any]:
    """A test client of the real application as production builds it (no test
    clock: the scripts read Redis's), on a migrated and emptied history
    database, with an archiver running: for tests that download reports."""
    from litestar.testing import TestClient

    from service.app import create_app
    from service.settings import Settings

    db = prepare_database(database_url)
    settings = Settings(
        redis_url=redis_url, database_url=db, signing_key=signing_key, sweep_interval_s=3600
    )
    with archiver_in_thread(redis_url, db), TestClient(create_app(settings)) as client:
        yield client


def spawn_archiver(
    redis_url: str,
    database_url: str,
    name: str,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A real ``python -m archiver`` process (so it can be SIGKILLed).

    Its log goes to ``log_path`` (a file, not a pipe nobody reads, which
    would block the archiver once full), else nowhere.
    """
    root = Path(__file__).resolve().parent.parent
    full_env = {
        **os.environ,
        **FAST,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "SEGMENTS_ARCHIVER_NAME": name,
        "PYTHONPATH": str(root),
        **(env or {}),
    }
    with open(log_path or os.devnull, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "archiver"],
            env=full_env,
            cwd=root,
            stdout=log,
            stderr=log,
        )


def archived(database_url: str) -> Counter[EventKey]:
    """How many history rows each event has in PostgreSQL."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT stream, entry_ms, entry_seq FROM history").fetchall()
    return Counter((s, ms, seq) for s, ms, seq in rows)


def prepare_database(database_url: str) -> str:
    """Migrated and emptied of history: a clean slate for one test."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE history, segment_events, archive_progress")
    return database_url


async def wait_for(
    predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition"
) -> None:
    """Until ``await predicate()`` (or ``predicate()``) is truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(interval_s)


def fill_history(database_url: str, rows: int, period: str = "2020-01") -> None:
    """``rows`` history rows in ``period`` (its partition created), straight into
    PostgreSQL with ``generate_series``: a big report without the archiver."""
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT history_ensure_partition(%s::date)", (f"{period}-01",))
        conn.execute(
            "INSERT INTO history"
            " (ts, user_id, segment, operation, reason, stream, entry_ms, entry_seq)"
            " SELECT %s::timestamptz + (i * interval '1 millisecond'), 1 + i %% 100000,"
            " 'SEGMENT_' || (i %% 50), CASE WHEN i %% 2 = 0 THEN 'add' ELSE 'remove' END,"
            " 'manual', '{bench}:events', i, 0"
            " FROM generate_series(1, %s) AS i ON CONFLICT DO NOTHING",
            (f"{period}-01T00:00:00Z", rows),
        )
        conn.execute("ANALYZE history")  # as autovacuum would soon: realistic plans
