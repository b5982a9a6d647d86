"""What a restore does to Redis: checks, marker, lock, wipe and bounded writes.

Every call is small: single-key commands, multi-key ones only on one shard's
keys (one hash tag, so one Cluster slot), in pipelines of at most
:data:`PIPELINE_COMMANDS` without MULTI, and the users themselves through
the bounded ``restoreUsers`` script, :data:`USERS_PER_CALL` a call (about a
few milliseconds of Redis time; segments_restore.scripts says why a script).

A restore is convergent rather than transactional: it empties the state keys
and writes the state history gives, and a second run does the same again. The
marker ``{g}:restore`` says a restore started and has not finished (so an
interrupted one may be run again without ``--replace``, and ``verify``
refuses to compare a half-written state); the lock ``{g}:restore:lock``
keeps two restores from running at once (it expires a few seconds after its
holder dies).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import Any

from redis.exceptions import ResponseError

from segments_core.keys import GLOBAL, Keyspace, ShardKeys
from segments_core.streams import GROUP, EntryId, format_id
from segments_restore.scripts import RESTORE_USERS

PIPELINE_COMMANDS = 500
"""Commands per pipeline: well under a millisecond of Redis time."""
USERS_PER_CALL = 100
"""Users (or removals) per restoreUsers / readUsers call: 2 to 3 ms of Redis time
for restoreUsers (measured: 16 ms for 500 users on the loaded 2-core machine), less
for readUsers."""
KEYS_PER_COMMAND = 500
"""Keys or members per multi-key command (UNLINK, SADD, ZADD)."""
SCAN_COUNT = 1_000
"""SSCAN's COUNT hint: a bounded step over a shard's users."""
LOCK_TTL_MS = 5_000
"""The lock outlives a dead holder by this much at most."""
LOCK_RENEW_S = 1.0
LOCK_WAIT_S = 7.0
"""How long a restore waits for a dead holder's lock to expire."""


class RestoreError(RuntimeError):
    """The restore cannot run (the message says why and what to do)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def server_time_ms(redis: Any) -> int:
    """The Redis server's clock, the one the scripts judge deadlines by (docs/design.md)."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def state_keys(keyspace: Keyspace) -> list[str]:
    """Every key of the service's state except user hashes (found through ``users``)."""
    keys = [GLOBAL.segments, GLOBAL.next_id, GLOBAL.deleting, GLOBAL.rollouts]
    for k in keyspace.shard_keys:
        keys += _shard_state_keys(k)
    return keys


def _shard_state_keys(k: ShardKeys) -> list[str]:
    return [
        k.users,
        k.seg_id,
        k.seg_slug,
        k.seg_dying,
        k.seg_dead,
        k.seg_rev,
        k.seg_pct,
        k.seg_hi,
        k.counts,
        k.due,
    ]


async def holds_state(redis: Any, keyspace: Keyspace) -> bool:
    """Whether Redis holds any segment, user or membership (streams do not count)."""
    pipe = redis.pipeline(transaction=False)
    for key in state_keys(keyspace):
        pipe.execute_command("EXISTS", key)
    return any(int(n) for n in await pipe.execute())


async def marker(redis: Any) -> dict[str, str] | None:
    """The marker of a restore that started and has not finished, if any."""
    raw = await redis.hgetall(GLOBAL.restore)
    return {_text(k): _text(v) for k, v in raw.items()} or None


async def set_marker(redis: Any, started_ms: int) -> None:
    await redis.hset(
        GLOBAL.restore,
        mapping={"started_ms": started_ms, "host": socket.gethostname(), "pid": os.getpid()},
    )


async def clear_marker(redis: Any) -> None:
    await redis.delete(GLOBAL.restore)


@contextlib.asynccontextmanager
async def restore_lock(redis: Any) -> AsyncIterator[None]:
    """Held for the whole restore; a second restore waits briefly, then gives up."""
    token = secrets.token_hex(8)
    loop = asyncio.get_running_loop()
    give_up = loop.time() + LOCK_WAIT_S
    while not await redis.set(GLOBAL.restore_lock, token, nx=True, px=LOCK_TTL_MS):
        if loop.time() > give_up:
            raise RestoreError(
                "another restore is running (lock {g}:restore:lock); wait for it to finish"
            )
        await asyncio.sleep(0.25)

    async def renew() -> None:
        while True:
            await asyncio.sleep(LOCK_RENEW_S)
            if _text(await redis.get(GLOBAL.restore_lock)) == token:
                await redis.set(GLOBAL.restore_lock, token, xx=True, px=LOCK_TTL_MS)

    renewal = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        if _text(await redis.get(GLOBAL.restore_lock)) == token:
            await redis.delete(GLOBAL.restore_lock)


async def prepare_streams(
    redis: Any, keyspace: Keyspace, archived: dict[str, tuple[EntryId, int]]
) -> None:
    """Every stream exists with the archiver's group; an empty one resumes past the archive.

    The group (created at 0, as the archiver creates it) makes the removals a
    restore writes reach PostgreSQL, even on a Redis that lost the group.
    A Redis that lost its streams would start them again below ids that
    PostgreSQL holds: an empty stream's last id (``XSETID``) and its group's
    position (``XGROUP SETID``) move to the highest archived id, so entry ids
    stay unique and a report's wait (archived up to the last id) is met.
    What the stream held before is gone from Redis, and a change-feed client
    whose cursor lies in that part must reset (segments_core.retention): the
    trim mark (``{g}:trimmed``) says it, and on Redis 7 so do the stream's
    entries-added (the archived rows, so more than it holds) and
    max-deleted-entry-id. A stream that holds entries is left as it is: they
    may wait for the archiver.
    """
    for stream in keyspace.history_streams():
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        if stream not in archived:
            continue
        top, rows = archived[stream]
        info = await redis.xinfo_stream(stream)
        if int(info["length"]):
            continue
        last = _text(info["last-generated-id"])
        ms, _, seq = last.partition("-")
        top = max(top, (int(ms), int(seq or 0)))
        await redis.zadd(GLOBAL.trimmed, {stream: top[0]}, gt=True)
        added = max(rows, int(info.get("entries-added") or 0), 1)
        try:
            await redis.execute_command(
                "XSETID", stream, format_id(top), "ENTRIESADDED", added,
                "MAXDELETEDID", format_id(top),
            )  # fmt: skip
        except ResponseError:  # Redis 6.2: no options; the trim mark says it
            await redis.execute_command("XSETID", stream, format_id(top))
        await redis.xgroup_setid(stream, GROUP, format_id(top))


async def wipe(redis: Any, keyspace: Keyspace) -> int:
    """Deletes the state (not the streams, not the shard count); returns user hashes removed.

    User hashes are found through each shard's ``users`` set, a bounded SSCAN
    step at a time; the big keys go with UNLINK (freed off the main thread).
    (Pipelines name commands through execute_command: a cluster pipeline's
    ``unlink()`` and ``exists()`` are coroutines that queue nothing.)
    """
    removed = 0
    for k in keyspace.shard_keys:
        cursor: int | bytes | str = 0
        while True:
            cursor, members = await redis.sscan(k.users, cursor, count=SCAN_COUNT)
            for i in range(0, len(members), KEYS_PER_COMMAND):
                chunk = [k.user_prefix + _text(uid) for uid in members[i : i + KEYS_PER_COMMAND]]
                removed += int(await redis.unlink(*chunk))
            if int(cursor) == 0:
                break
        pipe = redis.pipeline(transaction=False)
        for key in _shard_state_keys(k):
            pipe.execute_command("UNLINK", key)
        await pipe.execute()
    pipe = redis.pipeline(transaction=False)
    for key in (GLOBAL.segments, GLOBAL.next_id, GLOBAL.deleting, GLOBAL.rollouts):
        pipe.execute_command("UNLINK", key)
    await pipe.execute()
    return removed


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ShardWriter:
    """Buffered writes of one shard's users, sent as bounded ``restoreUsers`` calls.

    The script adds a user to ``users`` before writing the hash, so a restore
    killed mid-way leaves no hash a later wipe cannot find.
    """

    def __init__(self, redis: Any, keys: ShardKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._users: list[str] = []
        self._removals: list[str] = []

    def user(self, user_id: int, fields: dict[int, str]) -> None:
        if fields:
            self._users.append(f"{user_id} " + " ".join(f"{i} {s}" for i, s in fields.items()))
        else:
            self._users.append(str(user_id))

    def removal(self, user_id: int, slug: str, ts: int, reason: str) -> None:
        """A removal history lacks, for the shard's stream."""
        self._removals.append(f"{user_id} {slug} {ts} {reason}")

    @property
    def full(self) -> bool:
        return len(self._users) + len(self._removals) >= USERS_PER_CALL

    def take(self) -> Awaitable[Any] | None:
        """The buffered writes as one script call (None when there are none); buffer emptied."""
        if not self._users and not self._removals:
            return None
        k = self.keys
        call = RESTORE_USERS(
            self.redis,
            [k.users, k.due, k.events],
            [k.user_prefix, "\n".join(self._users), "\n".join(self._removals)],
        )
        self._users, self._removals = [], []
        return call

    async def flush(self) -> None:
        call = self.take()
        if call is not None:
            await call


class InFlight:
    """Pipelines sent while the next ones are being built, at most ``limit`` at once.

    Redis works through one while Python replays the next users: the two
    overlap instead of taking turns. Each pipeline stays small (module doc).
    """

    def __init__(self, limit: int = 2) -> None:
        self.limit = limit
        self._tasks: collections.deque[asyncio.Task[Any]] = collections.deque()

    async def send(self, call: Awaitable[Any]) -> None:
        self._tasks.append(asyncio.ensure_future(call))
        while len(self._tasks) > self.limit:
            await self._tasks.popleft()

    async def drain(self) -> None:
        while self._tasks:
            await self._tasks.popleft()


async def write_counts(redis: Any, keys: ShardKeys, counts: dict[int, int]) -> None:
    if counts:
        await redis.hset(keys.counts, mapping={str(i): n for i, n in counts.items()})
