"""Batches of rows -> PostgreSQL, exactly once per event.

A batch is copied (``COPY``, the fastest way in) into a per-connection
temporary staging table, then moved into its table with
``INSERT ... ON CONFLICT DO NOTHING``: a redelivered event collides with its
earlier copy on the unique event key and is skipped. The stream's progress
row is updated in the same transaction. The caller acknowledges the entries
in Redis only after ``write`` returned, i.e. after the commit.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Sequence

import msgspec
import psycopg
from psycopg import AsyncCopy, errors
from psycopg_pool import AsyncConnectionPool

from archiver import faults
from archiver.events import MEMBERSHIP_COLUMNS, Row
from segments_core.config import ConfigError

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    MEMBERSHIP = "membership"
    LIFECYCLE = "lifecycle"


_STAGING = {
    Kind.MEMBERSHIP: (
        "CREATE TEMP TABLE IF NOT EXISTS history_staging ("
        " stream text, entry_ms bigint, entry_seq bigint, user_id bigint, segment text,"
        " operation text, ts_ms bigint, reason text, deadline_ms bigint"
        ") ON COMMIT DELETE ROWS"
    ),
    Kind.LIFECYCLE: (
        "CREATE TEMP TABLE IF NOT EXISTS segment_events_staging ("
        " stream text, entry_ms bigint, entry_seq bigint, ts_ms bigint, segment text,"
        " segment_id bigint, operation text, percent numeric, description text"
        ") ON COMMIT DELETE ROWS"
    ),
}

_COPY = {
    Kind.MEMBERSHIP: f"COPY history_staging ({', '.join(MEMBERSHIP_COLUMNS)}) FROM STDIN",
    Kind.LIFECYCLE: (
        "COPY segment_events_staging (stream, entry_ms, entry_seq, ts_ms, segment,"
        " segment_id, operation, percent, description) FROM STDIN"
    ),
}

# Milliseconds become timestamps by interval arithmetic, which is exact (a
# float division through to_timestamp() is not, for every value).
_MOVE = {
    Kind.MEMBERSHIP: (
        "INSERT INTO history"
        " (ts, user_id, segment, operation, reason, deadline, stream, entry_ms, entry_seq)"
        " SELECT timestamptz 'epoch' + ts_ms * interval '1 millisecond', user_id, segment,"
        " operation, reason,"
        " timestamptz 'epoch' + deadline_ms * interval '1 millisecond',"
        " stream, entry_ms, entry_seq"
        " FROM history_staging ON CONFLICT DO NOTHING"
    ),
    Kind.LIFECYCLE: (
        "INSERT INTO segment_events"
        " (ts, segment, segment_id, operation, percent, description, stream, entry_ms,"
        " entry_seq)"
        " SELECT timestamptz 'epoch' + ts_ms * interval '1 millisecond', segment, segment_id,"
        " operation, percent, description, stream, entry_ms, entry_seq"
        " FROM segment_events_staging ON CONFLICT DO NOTHING"
    ),
}

_PROGRESS = (
    "INSERT INTO archive_progress AS p"
    " (stream, last_entry_ms, last_entry_seq, archived, updated_at)"
    " VALUES (%(stream)s, %(ms)s, %(seq)s, %(archived)s, now())"
    " ON CONFLICT (stream) DO UPDATE SET"
    "  last_entry_ms = CASE WHEN (excluded.last_entry_ms, excluded.last_entry_seq)"
    "   > (p.last_entry_ms, p.last_entry_seq) THEN excluded.last_entry_ms"
    "   ELSE p.last_entry_ms END,"
    "  last_entry_seq = CASE WHEN (excluded.last_entry_ms, excluded.last_entry_seq)"
    "   > (p.last_entry_ms, p.last_entry_seq) THEN excluded.last_entry_seq"
    "   ELSE p.last_entry_seq END,"
    "  archived = p.archived + excluded.archived,"
    "  updated_at = now()"
)

REJECTED_BY_DATA = (errors.DataError, errors.IntegrityError)
"""Errors that blame the rows, not the database: the batch is retried row by
row to find the culprits. Every other error (connection lost, server
shutting down, a missing table) is transient or an operator's to fix: the
batch is retried as a whole, with back-off, for as long as it takes."""


class WriteResult(msgspec.Struct, frozen=True):
    written: list[bytes]
    """Entry ids now in PostgreSQL (inserted, or already there)."""
    inserted: int
    """Rows actually inserted (``len(written) - inserted`` were duplicates)."""
    failed: dict[bytes, str]
    """Entry ids PostgreSQL rejected, with its message."""


async def _configure(conn: psycopg.AsyncConnection[object]) -> None:
    # Temporary tables belong to the session: created once per connection.
    for ddl in _STAGING.values():
        await conn.execute(ddl)
    # Session settings; the pool's autocommit keeps them out of any batch.
    await conn.execute("SET TIME ZONE 'UTC'")


def open_pool(database_url: str, size: int, timeout_s: float = 5.0) -> AsyncConnectionPool:
    """The archiver's pool: never gives up reconnecting (PostgreSQL may be down
    for long; the streams hold the events meanwhile)."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True},
        configure=_configure,
        timeout=timeout_s,
        reconnect_timeout=365 * 86400.0,
        open=False,
        name="archiver",
    )


def check_database(database_url: str, timeout_s: int = 5) -> None:
    """The database can be used: reachable with these credentials, and
    migrated. Else ``ConfigError`` naming DATABASE_URL (with PostgreSQL's own
    words, which never hold the password)."""
    try:
        with psycopg.connect(database_url, connect_timeout=timeout_s) as conn:
            conn.execute("SELECT 1 FROM history, archive_progress LIMIT 0")
    except errors.UndefinedTable:
        raise ConfigError(
            "DATABASE_URL: the database has no history tables; run `segments migrate`"
        ) from None
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"DATABASE_URL: cannot use the database: {reason}") from None


def months_of(rows: Iterable[Row]) -> set[dt.date]:
    """First days of the UTC months the rows' timestamps fall in."""
    found: set[dt.date] = set()
    lo = hi = None
    for row in rows:
        lo = row.ts_ms if lo is None or row.ts_ms < lo else lo
        hi = row.ts_ms if hi is None or row.ts_ms > hi else hi
    if lo is None or hi is None:
        return found
    first = dt.datetime.fromtimestamp(lo / 1000, dt.UTC).date().replace(day=1)
    last = dt.datetime.fromtimestamp(hi / 1000, dt.UTC).date().replace(day=1)
    if first == last:
        return {first}
    # Rare (a batch across a month's end, or old ttl deadlines): name each month.
    for row in rows:
        found.add(dt.datetime.fromtimestamp(row.ts_ms / 1000, dt.UTC).date().replace(day=1))
    return found


class HistoryWriter:
    """Writes batches of one stream's rows; safe to share between tasks."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool
        self._partitions: set[dt.date] = set()

    async def ensure_partitions(self, months: Iterable[dt.date]) -> None:
        missing = [m for m in months if m not in self._partitions]
        if not missing:
            return
        async with self._pool.connection() as conn:
            for month in sorted(missing):
                await conn.execute("SELECT history_ensure_partition(%s)", (month,))
                self._partitions.add(month)

    async def write(self, stream: str, kind: Kind, rows: Sequence[Row]) -> WriteResult:
        """Write ``rows`` (all from ``stream``) in one transaction.

        Raises what PostgreSQL raises, except a rejection of the data, which
        is narrowed down to the rows at fault (``WriteResult.failed``).
        """
        if not rows:
            return WriteResult([], 0, {})
        if kind is Kind.MEMBERSHIP:
            await self.ensure_partitions(months_of(rows))
        try:
            inserted = await self._write_batch(stream, kind, rows)
        except REJECTED_BY_DATA as exc:
            log.warning(
                "%s: batch of %d rejected (%s); retrying row by row", stream, len(rows), exc
            )
            return await self._write_one_by_one(stream, kind, rows)
        return WriteResult([r.entry_id for r in rows], inserted, {})

    async def _write_batch(self, stream: str, kind: Kind, rows: Sequence[Row]) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.cursor().copy(_COPY[kind]) as copy:
                await _copy_rows(copy, rows)
            faults.reached("after_copy")
            cur = await conn.execute(_MOVE[kind])
            inserted = max(cur.rowcount, 0)
            await self._progress(conn, stream, rows, inserted)
            faults.reached("before_commit")
        return inserted

    async def _write_one_by_one(self, stream: str, kind: Kind, rows: Sequence[Row]) -> WriteResult:
        written: list[bytes] = []
        failed: dict[bytes, str] = {}
        inserted = 0
        async with self._pool.connection() as conn, conn.transaction():
            for row in rows:
                try:
                    # A savepoint per row: a rejected row is rolled back alone.
                    async with conn.transaction():
                        async with conn.cursor().copy(_COPY[kind]) as copy:
                            await _copy_rows(copy, [row])
                        cur = await conn.execute(_MOVE[kind])
                        # ON COMMIT DELETE ROWS empties staging at commit only.
                        await conn.execute(f"TRUNCATE {_staging_name(kind)}")
                except REJECTED_BY_DATA as exc:
                    failed[row.entry_id] = str(exc).splitlines()[0]
                    continue
                inserted += max(cur.rowcount, 0)
                written.append(row.entry_id)
            ok = {*written}
            await self._progress(conn, stream, [r for r in rows if r.entry_id in ok], inserted)
        return WriteResult(written, inserted, failed)

    @staticmethod
    async def _progress(
        conn: psycopg.AsyncConnection[object], stream: str, rows: Sequence[Row], inserted: int
    ) -> None:
        if not rows:
            return
        last = max(rows, key=lambda r: (r.ms, r.seq))
        await conn.execute(
            _PROGRESS,
            {"stream": stream, "ms": last.ms, "seq": last.seq, "archived": inserted},
        )


async def _copy_rows(copy: AsyncCopy, rows: Sequence[Row]) -> None:
    # Membership rows are ready-made COPY lines: the whole batch goes in one
    # write. Lifecycle rows (free text) are escaped by psycopg's write_row.
    lines = [r.payload for r in rows if isinstance(r.payload, bytes)]
    if lines:
        await copy.write(b"".join(lines))
    for r in rows:
        if isinstance(r.payload, tuple):
            await copy.write_row(r.payload)


def _staging_name(kind: Kind) -> str:
    return "history_staging" if kind is Kind.MEMBERSHIP else "segment_events_staging"
