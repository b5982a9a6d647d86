"""How far behind the archiver is, and how many rows it has written.

Lag comes from ``segments_core.streams`` (the consumer group's view of every history
stream: age of the oldest entry not yet archived, by its id's clock). Rows
written come from the archiver's ``archive_progress`` table (a running count
per stream), cheap to read at any size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
import redis.asyncio as aioredis

from bench.results import ArchiverResult
from segments_core.keys import GLOBAL, Keyspace
from segments_core.streams import archiver_lag

POLL_S = 0.25
"""How often lag and row counts are sampled."""


@dataclass(frozen=True, slots=True)
class Backlog:
    entries: int
    """Entries delivered and not acknowledged, plus those not delivered yet."""
    lag_s: float
    """Age of the oldest entry not yet archived (0: none)."""

    @property
    def empty(self) -> bool:
        return self.entries == 0 and self.lag_s == 0.0


async def backlog(client: aioredis.Redis, lifecycle: bool = False) -> Backlog:
    """The archiver's backlog over the membership history streams (the shards'),
    and the segment lifecycle stream too if ``lifecycle``.

    The lifecycle stream is left out by default: a handful of entries, and one
    the archiver cannot parse stays pending until it is dead-lettered, which
    would stall every wait of the bench without saying anything about speed.
    """
    lag = await archiver_lag(client)
    streams = [s for s in lag.streams if lifecycle or s.stream != GLOBAL.events]
    entries = sum(s.pending + (s.undelivered or 0) for s in streams)
    return Backlog(entries, max((s.lag_s for s in streams), default=0.0))


async def stream_entries(client: aioredis.Redis) -> int:
    """Entries held in the membership streams (all unarchived while no archiver runs)."""
    pipe = client.pipeline(transaction=False)
    for stream in Keyspace().history_streams():
        if stream != GLOBAL.events:
            pipe.xlen(stream)
    return sum(int(n) for n in await pipe.execute())


def archived_rows(database_url: str) -> int:
    """Rows the archiver has inserted so far, from its progress table."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(archived), 0) FROM archive_progress").fetchone()
    return int(row[0]) if row else 0


async def wait_drained(
    client: aioredis.Redis, timeout_s: float, log: Callable[[str], None] | None = None
) -> float:
    """Wait until the backlog is empty (at most ``timeout_s``); returns the seconds waited."""
    started = time.perf_counter()
    last_log = started
    while True:
        now = time.perf_counter()
        b = await backlog(client)
        if b.empty:
            return now - started
        if now - started > timeout_s:
            raise TimeoutError(f"archiver backlog still {b.entries} entries after {timeout_s} s")
        if log is not None and now - last_log > 10:
            last_log = now
            log(f"  archiver backlog {b.entries:,} entries")
        await asyncio.sleep(POLL_S)


async def measure_drain(
    client: aioredis.Redis,
    database_url: str,
    timeout_s: float,
    log: Callable[[str], None],
) -> ArchiverResult:
    """Rows/s while a started archiver drains the backlog it found: from its
    first row written to the last (so its start-up time does not count)."""
    before = await asyncio.to_thread(archived_rows, database_url)
    expected = await stream_entries(client)
    deadline = time.perf_counter() + timeout_s
    first: tuple[float, int] | None = None
    last_log = time.perf_counter()
    while time.perf_counter() < deadline:
        rows = await asyncio.to_thread(archived_rows, database_url)
        now = time.perf_counter()
        if first is None and rows > before:
            first = (now, rows)
        if (await backlog(client)).empty:
            break
        if now - last_log > 10:
            last_log = now
            log(f"  archiver: {rows - before:,} of ~{expected:,} rows")
        await asyncio.sleep(POLL_S / 5)
    else:
        raise TimeoutError(f"archiver did not drain {expected} entries in {timeout_s} s")
    end = time.perf_counter()
    rows = await asyncio.to_thread(archived_rows, database_url)
    # Timed from the first rows seen (the archiver's start-up does not count)
    # to the empty backlog; the rows already there at the first sight are left out.
    start_at, start_rows = first if first is not None else (end, rows)
    seconds = end - start_at
    return ArchiverResult(
        events=rows - before,
        seconds=seconds,
        events_per_s=(rows - start_rows) / seconds if seconds > 0 else 0.0,
        method="postgres rows (archive_progress), from the first rows seen to an empty backlog",
    )
