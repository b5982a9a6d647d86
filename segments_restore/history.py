"""The history, in replay order: PostgreSQL's, plus what only the streams hold yet.

The archiver stores an event in PostgreSQL and only then acknowledges it;
what it has not stored yet waits in the Redis streams (docs/history.md). So
the whole history is the ``history`` / ``segment_events`` tables plus the
unacknowledged tail of each stream, without the entries both hold (the same
event key: stream and entry id).

The order matters (SPEC §3): one user's events sorted by timestamp, then by
stream entry id, are in the order the changes happened (a user's events are
all on the user's shard stream). One query sorted by (user, timestamp, entry
id) gives the users one after the other, each user's events in order; it
follows the index ``(user_id, ts)`` (no sort of the whole history) and is
read through a server-side cursor, so memory holds one batch of rows
however long the history.

How the streams are read:

1. each stream's last generated id is noted (the **horizon**: everything up
   to it is in this snapshot; ``verify`` looks past it for changes made while
   it ran);
2. its entries from the consumer group's floor (below it, every entry was
   acknowledged, so archived or dead-lettered) up to the horizon are copied,
   in bounded ``XRANGE`` batches, into temporary tables; entries that break
   the stream contract are skipped, as the archiver dead-letters them;
3. only then is PostgreSQL's snapshot taken. An entry the archiver stores and
   trims meanwhile is in the copy, or in the snapshot, or both: never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from archiver.events import MEMBERSHIP_COLUMNS, EntryError, lifecycle_row, membership_row, now_ms
from segments_core.keys import GLOBAL
from segments_core.streams import ZERO, EntryId, format_id, group_state, last_generated_ids
from segments_restore.catalogue import LifecycleEvent, percent_x100
from segments_restore.replay import Event

XRANGE_COUNT = 5_000
"""Stream entries per XRANGE: a few milliseconds of Redis time each."""
SORT_WORK_MEM = "64MB"
"""work_mem of the reads: the stream entries' sort, the lifecycle's, the count."""

_STAGE_MEMBERSHIPS = (
    "CREATE TEMP TABLE IF NOT EXISTS restore_stream_history ("
    " stream text, entry_ms bigint, entry_seq bigint, user_id bigint, segment text,"
    " operation text, ts_ms bigint, reason text, deadline_ms bigint)"
)
_STAGE_LIFECYCLE = (
    "CREATE TEMP TABLE IF NOT EXISTS restore_stream_segments ("
    " stream text, entry_ms bigint, entry_seq bigint, ts_ms bigint, segment text,"
    " segment_id bigint, operation text, percent numeric, description text)"
)
_COPY_MEMBERSHIPS = f"COPY restore_stream_history ({', '.join(MEMBERSHIP_COLUMNS)}) FROM STDIN"
_COPY_LIFECYCLE = (
    "COPY restore_stream_segments (stream, entry_ms, entry_seq, ts_ms, segment,"
    " segment_id, operation, percent, description) FROM STDIN"
)

_MS = "round(date_part('epoch', {col}) * 1000)::bigint"
"""A timestamptz as integer ms (exact: ms since the epoch fit a double)."""
_TS = "timestamptz 'epoch' + {col} * interval '1 millisecond'"

_MEMBERSHIP_EVENTS = f"""
    SELECT user_id, segment, operation, reason, ts, deadline, entry_ms, entry_seq
    FROM history
    UNION ALL
    SELECT s.user_id, s.segment, s.operation, s.reason, {_TS.format(col="s.ts_ms")},
           {_TS.format(col="s.deadline_ms")}, s.entry_ms, s.entry_seq
    FROM restore_stream_history s
    WHERE NOT EXISTS (
        SELECT 1 FROM history h
        WHERE h.ts = {_TS.format(col="s.ts_ms")}
          AND h.stream = s.stream AND h.entry_ms = s.entry_ms AND h.entry_seq = s.entry_seq)
"""

_REPLAY = f"""
    SELECT user_id, segment, operation = 'add', reason, {_MS.format(col="ts")},
           coalesce({_MS.format(col="deadline")}, 0), entry_ms
    FROM ({_MEMBERSHIP_EVENTS}) e
    ORDER BY user_id, ts, entry_ms, entry_seq
"""
"""Every membership event, user by user, each user's in order. The order is
the index ``(user_id, ts)``'s: PostgreSQL merges the partitions' index scans
and sorts only events of one user stamped alike, never the whole history."""

FETCH_ROWS = 10_000
"""Rows per fetch from the server-side cursor: one round trip per 10,000 events."""

_LIFECYCLE = f"""
    SELECT segment_id, segment, operation, {_MS.format(col="ts")}, entry_ms, entry_seq,
           percent, description
    FROM segment_events
    UNION ALL
    SELECT segment_id, segment, operation, ts_ms, entry_ms, entry_seq, percent, description
    FROM restore_stream_segments s
    WHERE NOT EXISTS (
        SELECT 1 FROM segment_events e
        WHERE e.stream = s.stream AND e.entry_ms = s.entry_ms AND e.entry_seq = s.entry_seq)
    ORDER BY 1, 4, 5, 6
"""


@dataclass
class StreamSnapshot:
    """What was read from the streams."""

    horizons: dict[str, EntryId] = field(default_factory=dict)
    """Per stream: its last generated id when it was read."""
    entries: int = 0
    """Entries copied (archived ones among them are dropped by the query)."""
    skipped: int = 0
    """Entries that break the stream contract (the archiver dead-letters them)."""


class UserEvents:
    """One user's events, in order."""

    __slots__ = ("events", "user_id")

    def __init__(self, user_id: int, events: list[Event]) -> None:
        self.user_id = user_id
        self.events = events


class History:
    """One PostgreSQL session reading the history (temporary tables are per session)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, database_url: str) -> History:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        await conn.execute("SET TIME ZONE 'UTC'")
        await conn.execute(_STAGE_MEMBERSHIPS)
        await conn.execute(_STAGE_LIFECYCLE)
        await conn.execute("TRUNCATE restore_stream_history, restore_stream_segments")
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    # -- the streams ------------------------------------------------------------------

    async def stage_streams(self, redis: Any, streams: list[str]) -> StreamSnapshot:
        """Copies what the streams hold past their archived floor (module doc)."""
        snapshot = StreamSnapshot(horizons=await last_generated_ids(redis, streams))
        checked_at = now_ms()
        for stream in streams:
            horizon = snapshot.horizons[stream]
            if horizon == ZERO:
                continue
            state = await group_state(redis, stream)
            start = "-" if state.floor == ZERO else format_id(state.floor)
            lifecycle = stream == GLOBAL.events
            key = stream.encode()
            while True:
                batch = await redis.xrange(
                    stream, min=start, max=format_id(horizon), count=XRANGE_COUNT
                )
                if not batch:
                    break
                lines: list[bytes] = []
                rows: list[tuple[Any, ...]] = []
                for entry_id, fields in batch:
                    try:
                        if lifecycle:
                            payload = lifecycle_row(key, entry_id, fields, checked_at).payload
                            assert isinstance(payload, tuple)
                            rows.append(payload)
                        else:
                            line = membership_row(key, entry_id, fields, checked_at).payload
                            assert isinstance(line, bytes)
                            lines.append(line)
                    except EntryError:
                        snapshot.skipped += 1
                await self._copy(lines, rows)
                snapshot.entries += len(lines) + len(rows)
                last = batch[-1][0]
                start = "(" + (last.decode() if isinstance(last, bytes) else last)
                if len(batch) < XRANGE_COUNT:
                    break
        return snapshot

    async def _copy(self, lines: list[bytes], rows: list[tuple[Any, ...]]) -> None:
        if lines:
            async with self.conn.cursor().copy(_COPY_MEMBERSHIPS) as copy:
                await copy.write(b"".join(lines))
        if rows:
            async with self.conn.cursor().copy(_COPY_LIFECYCLE) as copy:
                for row in rows:
                    await copy.write_row(row)

    # -- the snapshot -------------------------------------------------------------------

    async def begin(self) -> None:
        """One consistent view of PostgreSQL for every read that follows (until ``end``)."""
        await self.conn.set_autocommit(False)
        await self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        await self.conn.execute(f"SET LOCAL work_mem = '{SORT_WORK_MEM}'")

    async def end(self) -> None:
        await self.conn.rollback()
        await self.conn.set_autocommit(True)

    async def lifecycle(self) -> list[LifecycleEvent]:
        cur = await self.conn.execute(_LIFECYCLE)
        return [
            LifecycleEvent(int(sid), slug, op, int(ts), int(ms), int(seq), percent_x100(p), desc)
            for sid, slug, op, ts, ms, seq, p, desc in await cur.fetchall()
        ]

    async def count_memberships(self) -> int:
        cur = await self.conn.execute(f"SELECT count(*) FROM ({_MEMBERSHIP_EVENTS}) e")
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def shard_sample(self, limit: int = 2_000) -> list[tuple[str, int]]:
        """(stream, user id) of a few users (the smallest ids: an index read)."""
        cur = await self.conn.execute(
            "(SELECT stream, user_id FROM history ORDER BY user_id LIMIT %(n)s)"
            " UNION (SELECT stream, user_id FROM restore_stream_history LIMIT %(n)s)",
            {"n": limit},
        )
        return [(stream, int(uid)) for stream, uid in await cur.fetchall()]

    async def archived(self) -> dict[str, tuple[EntryId, int]]:
        """Per stream, the highest entry id the archiver stored and how many rows
        (``archive_progress``)."""
        cur = await self.conn.execute(
            "SELECT stream, last_entry_ms, last_entry_seq, archived FROM archive_progress"
        )
        return {
            stream: ((int(ms), int(seq)), int(n)) for stream, ms, seq, n in await cur.fetchall()
        }

    async def users(self) -> AsyncIterator[list[UserEvents]]:
        """Every user with events, by user id, in batches (a user is never split).

        Read through a server-side cursor, :data:`FETCH_ROWS` at a time, so
        memory holds one batch whatever the size of the history.
        """
        current: UserEvents | None = None
        async with self.conn.cursor(name="restore_replay") as cur:
            await cur.execute(_REPLAY)
            # The next rows travel while the caller works on these ones.
            ahead = asyncio.ensure_future(cur.fetchmany(FETCH_ROWS))
            try:
                while rows := await ahead:
                    ahead = asyncio.ensure_future(cur.fetchmany(FETCH_ROWS))
                    done: list[UserEvents] = []
                    for row in rows:  # (user_id, slug, add, reason, ts, deadline, entry_ms)
                        if current is None or row[0] != current.user_id:
                            if current is not None:
                                done.append(current)
                            current = UserEvents(row[0], [])
                        current.events.append(row)
                    if done:
                        yield done
            finally:
                if not ahead.done():
                    ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await ahead
        if current is not None:
            yield [current]
