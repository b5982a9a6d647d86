"""How long the history streams keep their entries, and how far back a feed can resume.

The archiver trims a stream only below both its archived position and a
retention window (``now - retention``, by the stream ids' clock), so the
change feed (SPEC §4) can replay the last minutes to a subscriber that
reconnects with a cursor.

Before a trim the archiver records its point in ``{g}:trimmed`` (a sorted
set: stream -> ms of the trim point, only ever raised), so a cursor can be
checked on any Redis: every entry ever trimmed from a stream has an id below
that point. Redis 7 adds what XINFO STREAM knows: ``entries-added`` (when it
equals the length, nothing was ever removed, whatever the cursor) and
``max-deleted-entry-id`` (the highest id removed by XDEL: the archiver's
dead letters; XTRIM does not move it). A trim by anyone but the archiver is
seen on Redis 7 only when nothing else explains the removals; on 6.2 not at
all: only the archiver may trim the history streams.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from segments_core.keys import GLOBAL
from segments_core.streams import ZERO, AnyRedis, EntryId, format_id, parse_id

RETENTION_MS = 600_000
"""Default window (10 minutes): a subscriber that reconnects within it misses
nothing. Memory cost: the streams hold this many minutes of events."""


def trim_point(archived_floor: EntryId, now_ms: int, retention_ms: int) -> EntryId:
    """Below this id a stream may be trimmed: archived, and older than the window."""
    return min(archived_floor, (max(0, now_ms - retention_ms), 0))


async def trim(redis: AnyRedis, stream: str, point: EntryId) -> bool:
    """Trims ``stream`` below ``point``, recording the point first; False: nothing to trim.

    No entry below the point, no mark: a mark older than a stream's entries
    would reset, for nothing, a cursor from before the stream's first entry.
    The mark goes before the trim, so a reader never sees entries gone
    without a mark that says so; ``ZADD GT`` keeps the highest mark when
    archivers race. Approximate (``~``): Redis removes whole macro-nodes
    only, all below the point, which is far cheaper than an exact trim.
    """
    oldest = await redis.xrange(stream, count=1)
    if not oldest or parse_id(oldest[0][0]) >= point:
        return False
    await redis.zadd(GLOBAL.trimmed, {stream: point[0]}, gt=True)
    await redis.xtrim(stream, minid=format_id(point), approximate=True)
    return True


class StreamBounds(msgspec.Struct, frozen=True, kw_only=True):
    """What a stream still holds, at one instant."""

    stream: str
    last_generated: EntryId
    first: EntryId | None
    """The oldest entry still in the stream; None when it is empty or absent."""
    max_deleted: EntryId | None
    """Highest id removed by XDEL (Redis >= 7); None where Redis does not tell."""
    removed: int | None
    """Entries ever removed, trimmed or deleted (Redis >= 7); None where unknown."""
    trimmed_ms: int | None
    """The archiver's trim mark: every trimmed entry's ms is at most this."""

    def resumable_from(self, position: EntryId) -> bool:
        """Every entry after ``position`` is still in the stream (none was removed).

        A position beyond the last generated id is not one of this stream's
        (another deployment, or data lost by Redis): not resumable.
        """
        if position > self.last_generated:
            return False
        if position == self.last_generated or self.removed == 0:
            return True  # nothing after it, or nothing ever removed
        if self.first is not None and position >= self.first:
            return True
        known = self.trimmed_ms is not None or self.max_deleted not in (None, ZERO)
        if self.removed and not known:
            return False  # removed by someone else: no telling what
        after_trims = self.trimmed_ms is None or position[0] > self.trimmed_ms
        return after_trims and (self.max_deleted is None or position >= self.max_deleted)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _info(redis: AnyRedis, stream: str) -> dict[str, Any] | None:
    try:
        info: dict[str, Any] = await redis.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return info


async def stream_bounds(redis: AnyRedis, streams: list[str]) -> list[StreamBounds]:
    """The bounds of each stream (one command per key: works on Cluster)."""
    infos = await asyncio.gather(*(_info(redis, s) for s in streams))
    marks = {
        _text(member): int(score)
        for member, score in await redis.zrange(GLOBAL.trimmed, 0, -1, withscores=True)
    }
    out: list[StreamBounds] = []
    for stream, info in zip(streams, infos, strict=True):
        if info is None:
            out.append(
                StreamBounds(
                    stream=stream,
                    last_generated=ZERO,
                    first=None,
                    max_deleted=None,
                    removed=None,
                    trimmed_ms=marks.get(stream),
                )
            )
            continue
        first = info.get("first-entry")
        deleted = info.get("max-deleted-entry-id")
        added = info.get("entries-added")
        out.append(
            StreamBounds(
                stream=stream,
                last_generated=parse_id(info["last-generated-id"]),
                first=parse_id(first[0]) if first else None,
                max_deleted=parse_id(deleted) if deleted is not None else None,
                removed=int(added) - int(info["length"]) if added is not None else None,
                trimmed_ms=marks.get(stream),
            )
        )
    return out
