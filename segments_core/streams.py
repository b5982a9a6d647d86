"""How far the archiver is behind each stream, read from the consumer group.

The archiver acknowledges an entry only after the PostgreSQL transaction
holding its row committed (or after copying it to the dead-letter stream).
So, for a stream and a target id T, every entry up to T is archived exactly
when the group has delivered past T (``last-delivered-id >= T``) and no entry
up to T is still pending (the smallest pending id is above T, or nothing is
pending).

The two are read one after the other, last-delivered-id first, not in one
MULTI: on Redis Cluster redis-py runs a transaction on a thread and event
loop of its own, which stalls the caller's loop and breaks when a node
fails. The order makes the answer safe without a snapshot. An entry that
was delivered when the first read ran stays pending until it is
acknowledged (a claim moves it between consumers, still pending), so if the
later read finds nothing pending up to T, every entry up to the delivered
id of the first read was acknowledged. Read in the other order, entries
delivered in between would count as archived. The answer can only be late,
never early.

The same two reads give the trim floor: every entry below
``min(smallest pending id, last-delivered-id + 1)`` is archived.

Only single-key commands of Redis 6.2 are used, so this works the same on a
single Redis and on Redis Cluster, with clients decoding responses or not.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

GROUP = "archiver"
"""The archiver's consumer group; every archiver joins it to share the work."""

AnyRedis = Redis | RedisCluster
EntryId = tuple[int, int]
ZERO: EntryId = (0, 0)


def parse_id(raw: bytes | str | None) -> EntryId:
    if raw is None:
        return ZERO
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(entry_id: EntryId) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def successor(entry_id: EntryId) -> EntryId:
    return entry_id[0], entry_id[1] + 1


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class GroupState(msgspec.Struct, frozen=True, kw_only=True):
    """One stream seen by one consumer group (read as ``group_state`` explains)."""

    stream: str
    exists: bool
    """False: the stream has no such group (the archiver never ran on it)."""
    last_generated: EntryId
    last_delivered: EntryId = ZERO
    pending: int = 0
    pending_min: EntryId | None = None
    undelivered: int | None = None
    """Entries not yet read by the group (Redis >= 7 only; None on 6.2)."""

    def archived_through(self, target: EntryId) -> bool:
        """Every entry with id <= target is archived (or dead-lettered)."""
        if target == ZERO:
            return True
        if not self.exists or self.last_delivered < target:
            return False
        return self.pending_min is None or self.pending_min > target

    @property
    def floor(self) -> EntryId:
        """Every entry below this id is archived: the safe ``XTRIM MINID``."""
        if not self.exists:
            return ZERO
        nxt = successor(self.last_delivered)
        return min(self.pending_min, nxt) if self.pending_min is not None else nxt


async def last_generated_ids(redis: AnyRedis, streams: list[str]) -> dict[str, EntryId]:
    """Each stream's last generated id: the ids every event so far is at or below."""

    async def one(stream: str) -> EntryId:
        try:
            info = await redis.xinfo_stream(stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return ZERO
            raise
        return parse_id(info["last-generated-id"])

    ids = await asyncio.gather(*(one(s) for s in streams))
    return dict(zip(streams, ids, strict=True))


def _missing(exc: ResponseError) -> bool:
    return "no such key" in str(exc).lower()


async def group_state(redis: AnyRedis, stream: str, group: str = GROUP) -> GroupState:
    """The group's view of ``stream``: three reads, in the order the module doc explains."""
    try:
        stream_info = await redis.xinfo_stream(stream)
    except ResponseError as exc:
        if _missing(exc):
            return GroupState(stream=stream, exists=False, last_generated=ZERO)
        raise
    last_generated = parse_id(stream_info["last-generated-id"])
    try:
        groups = await redis.xinfo_groups(stream)
        mine: dict[str, Any] | None = next((g for g in groups if _text(g["name"]) == group), None)
        if mine is None:
            return GroupState(stream=stream, exists=False, last_generated=last_generated)
        pending = await redis.xpending(stream, group)
    except ResponseError as exc:
        # The stream or the group went away between two reads (deleted by hand).
        if _missing(exc) or "NOGROUP" in str(exc):
            return GroupState(stream=stream, exists=False, last_generated=last_generated)
        raise
    count = int(pending["pending"])
    lag = mine.get("lag")
    return GroupState(
        stream=stream,
        exists=True,
        last_generated=last_generated,
        last_delivered=parse_id(mine["last-delivered-id"]),
        pending=count,
        pending_min=parse_id(pending["min"]) if count else None,
        undelivered=int(lag) if lag is not None else None,
    )


async def trim_floor(redis: AnyRedis, stream: str) -> EntryId:
    """Below this id every group has archived everything: safe to trim.

    Every group counts, not only the archiver's, so that another consumer of
    the stream (an audit tap, say) never loses an entry it has not read.
    """
    groups = await redis.xinfo_groups(stream)
    if not groups:
        return ZERO
    floors = [(await group_state(redis, stream, _text(g["name"]))).floor for g in groups]
    return min(floors)


class StreamLag(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    group: bool
    """False: no archiver has ever read this stream (its events wait)."""
    pending: int
    """Delivered to an archiver, not yet acknowledged."""
    undelivered: int | None
    """Not yet read by any archiver (Redis >= 7; None on 6.2)."""
    lag_s: float
    """Age of the oldest unarchived entry, by the entry id's clock (0: none)."""


class ArchiverLag(msgspec.Struct, frozen=True, kw_only=True):
    max_lag_s: float
    pending: int
    streams: list[StreamLag]


async def _oldest_unarchived_ms(redis: AnyRedis, state: GroupState) -> int | None:
    candidates: list[int] = []
    if state.pending_min is not None:
        candidates.append(state.pending_min[0])
    if state.last_generated > state.last_delivered:
        start = "-" if not state.exists else "(" + format_id(state.last_delivered)
        first = await redis.xrange(state.stream, min=start, max="+", count=1)
        if first:
            candidates.append(parse_id(first[0][0])[0])
    return min(candidates) if candidates else None


async def archiver_lag(redis: AnyRedis, streams: list[str], group: str = GROUP) -> ArchiverLag:
    """Per stream: pending count, undelivered count and lag seconds; for /readyz."""
    states = await asyncio.gather(*(group_state(redis, s, group) for s in streams))
    oldest = await asyncio.gather(*(_oldest_unarchived_ms(redis, s) for s in states))
    now_ms = time.time() * 1000
    out = [
        StreamLag(
            stream=state.stream,
            group=state.exists or state.last_generated == ZERO,
            pending=state.pending,
            undelivered=state.undelivered,
            lag_s=0.0 if ms is None else max(0.0, (now_ms - ms) / 1000),
        )
        for state, ms in zip(states, oldest, strict=True)
    ]
    return ArchiverLag(
        max_lag_s=max((s.lag_s for s in out), default=0.0),
        pending=sum(s.pending for s in out),
        streams=out,
    )
