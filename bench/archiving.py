"""The archiver seen from outside: its backlog and lag, and its throughput.

Backlog and lag come from ``segments_core.streams`` (the consumer group's view
of each membership history stream); rows written come from the archiver's
``archive_progress`` table (a running count per stream), cheap at any size.
The segment lifecycle stream is left out: a handful of entries, and one the
archiver cannot parse stays pending until dead-lettered, which would stall
every wait of the bench without saying anything about speed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import redis.asyncio as aioredis

from bench.results import ArchiverResult
from segments_core.keys import Keyspace
from segments_core.streams import archiver_lag

POLL_S = 0.25
"""How often lag and row counts are sampled."""


def membership_streams(keyspace: Keyspace) -> list[str]:
    return [k.events for k in keyspace.shard_keys]


async def backlog(client: aioredis.Redis, keyspace: Keyspace) -> tuple[int, float]:
    """(entries not archived yet, age in seconds of the oldest of them; 0 when none)."""
    lag = await archiver_lag(client, membership_streams(keyspace))
    entries = sum(s.pending + (s.undelivered or 0) for s in lag.streams)
    return entries, max((s.lag_s for s in lag.streams), default=0.0)


def archived_rows(database_url: str) -> int:
    """Rows the archiver has inserted so far, from its progress table."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT coalesce(sum(archived), 0) FROM archive_progress").fetchone()
    return int(row[0]) if row else 0


async def wait_drained(client: aioredis.Redis, keyspace: Keyspace, timeout_s: float) -> None:
    """Until the backlog is empty; TimeoutError after ``timeout_s``."""
    deadline = time.perf_counter() + timeout_s
    while (left := await backlog(client, keyspace)) != (0, 0.0):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"archiver backlog still {left[0]:,} entries after {timeout_s} s")
        await asyncio.sleep(POLL_S)


async def measure_drain(
    client: aioredis.Redis,
    keyspace: Keyspace,
    database_url: str,
    timeout_s: float,
    log: Callable[[str], None],
) -> ArchiverResult:
    """Rows/s while a just started archiver drains the backlog it found, from the
    first rows it writes (its start-up does not count) to an empty backlog."""
    before = await asyncio.to_thread(archived_rows, database_url)
    last_log = time.perf_counter()
    deadline = last_log + timeout_s
    first: tuple[float, int] | None = None
    while True:
        rows = await asyncio.to_thread(archived_rows, database_url)
        now = time.perf_counter()
        if first is None and rows > before:
            first = (now, rows)
        if (await backlog(client, keyspace)) == (0, 0.0):
            break
        if now > deadline:
            raise TimeoutError(f"archiver did not drain its backlog in {timeout_s} s")
        if now - last_log > 10:
            last_log = now
            log(f"  archiver: {rows - before:,} rows")
        await asyncio.sleep(POLL_S / 5)
    end = time.perf_counter()
    rows = await asyncio.to_thread(archived_rows, database_url)
    start_at, start_rows = first if first is not None else (end, rows)
    seconds = end - start_at
    return ArchiverResult(
        events=rows - before,
        seconds=seconds,
        events_per_s=(rows - start_rows) / seconds if seconds > 0 else 0.0,
    )
