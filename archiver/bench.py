"""Throughput of the history path, for ``segments bench`` and for a quick look.

- ``measure_archiver_throughput``: fills the streams with membership events
  (archiver stopped), then starts an archiver and times until every entry is
  committed in PostgreSQL and acknowledged: events/s into PostgreSQL.
- ``measure_report_rate``: inserts a month of rows with ``generate_series``,
  then streams that month's CSV through ``service.reports.stream_csv`` (the
  code behind the download link) and counts rows/s and the process's peak
  RSS growth.

Both write into the databases they are given: use throwaway ones.
Run: ``python -m archiver.bench REDIS_URL DATABASE_URL [events] [rows]``.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import time

import msgspec
import psycopg
from redis.asyncio import Redis

from archiver import config as config_module
from archiver import worker
from archiver.migrate import migrate
from segments_core.keys import Keyspace
from segments_core.streams import group_state, last_generated_ids

REASONS = ("manual", "ttl", "percent", "segment_deleted", "user_deleted")


class ArchiverThroughput(msgspec.Struct, kw_only=True):
    events: int
    seconds: float
    events_per_s: float
    batch_size: int
    method: str = (
        "streams pre-filled with N membership events over 16 shards, archiver started,"
        " time until every entry is committed in PostgreSQL and acknowledged"
    )


class ReportRate(msgspec.Struct, kw_only=True):
    rows: int
    bytes: int
    seconds: float
    rows_per_s: float
    peak_rss_growth_mb: float
    method: str = (
        "one month of rows inserted with generate_series, streamed through"
        " service.reports.stream_csv (COPY TO STDOUT) and discarded; RSS growth is"
        " ru_maxrss after minus RSS before"
    )


async def fill_streams(redis_url: str, events: int, users: int = 100_000) -> None:
    """XADD ``events`` membership events following the stream contract."""
    redis = Redis.from_url(redis_url)
    rng = random.Random(7)
    now = int(time.time() * 1000)
    try:
        pipe = redis.pipeline(transaction=False)
        for i in range(events):
            user = rng.randrange(1, users)
            pipe.xadd(
                Keyspace().for_user(user).events,
                {
                    "u": str(user),
                    "s": f"SEG_{i % 50}",
                    "o": "add" if i % 2 else "remove",
                    "t": str(now - events + i),
                    "r": REASONS[i % 5],
                },
            )
            if len(pipe) >= 10_000:
                await pipe.execute()
        await pipe.execute()
    finally:
        await redis.aclose()


async def wait_archived(redis_url: str, timeout_s: float) -> bool:
    """Until every stream's entries so far are archived, or the timeout."""
    redis = Redis.from_url(redis_url)
    try:
        targets = await last_generated_ids(redis, Keyspace().history_streams())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(group_state(redis, s) for s in targets))
            if all(st.archived_through(targets[st.stream]) for st in states):
                return True
            await asyncio.sleep(0.02)
        return False
    finally:
        await redis.aclose()


async def measure_archiver_throughput(
    redis_url: str, database_url: str, events: int = 200_000, timeout_s: float = 120.0
) -> ArchiverThroughput:
    """Events/s an in-process archiver moves into PostgreSQL (empty Redis db expected)."""
    migrate(database_url)
    await fill_streams(redis_url, events)
    cfg = config_module.load()
    cfg = msgspec.structs.replace(cfg, consumer="bench", block_ms=50)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run(redis_url, database_url, cfg, stop))
    try:
        if not await wait_archived(redis_url, timeout_s):
            raise TimeoutError(f"archiver did not catch up within {timeout_s} s")
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        await task
    return ArchiverThroughput(
        events=events, seconds=seconds, events_per_s=events / seconds, batch_size=cfg.batch_size
    )


def fill_history(database_url: str, rows: int, period: str = "2020-01") -> None:
    """``rows`` history rows in ``period`` (its partition is created)."""
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


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def measure_report_rate(
    database_url: str, rows: int = 1_000_000, period: str = "2020-01", fill: bool = True
) -> ReportRate:
    from psycopg_pool import AsyncConnectionPool

    from service.reports import ReportQuery, stream_csv

    if fill:
        await asyncio.to_thread(fill_history, database_url, rows, period)
    before = _rss_mb()
    n_bytes = lines = 0
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        started = time.perf_counter()
        async for chunk in stream_csv(pool, ReportQuery.parse(period)):
            n_bytes += len(chunk)
            lines += chunk.count(b"\n")
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return ReportRate(
        rows=lines - 1,
        bytes=n_bytes,
        seconds=seconds,
        rows_per_s=(lines - 1) / seconds,
        peak_rss_growth_mb=max(0.0, peak - before),
    )


async def _main(argv: list[str]) -> None:
    redis_url, database_url = argv[0], argv[1]
    events = int(argv[2]) if len(argv) > 2 else 200_000
    rows = int(argv[3]) if len(argv) > 3 else 1_000_000
    print(
        msgspec.json.encode(
            await measure_archiver_throughput(redis_url, database_url, events)
        ).decode()
    )
    print(msgspec.json.encode(await measure_report_rate(database_url, rows)).decode())


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    asyncio.run(_main(sys.argv[1:]))
