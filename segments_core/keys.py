"""Every Redis key name of the service, and the user -> shard mapping.

Nothing else in the code base formats a key. Keys that one Lua script
touches share a hash tag (``{sNN}`` for a shard, ``{g}`` for the global
catalogue), so every script runs within one Redis Cluster slot.

The number of logical shards is a property of a deployment: chosen when it
is first initialised, kept in Redis (``{g}:shards``), and read by every
process at start (``load_keyspace``). Each shard is one hash tag, so one
Cluster slot: more shards let more masters share the users.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

DEFAULT_SHARDS = 16
"""Logical shards of a new deployment unless configured (``SEGMENTS_SHARDS``).
Each is one hash tag and so one Cluster slot; once a deployment holds data the
number is fixed: changing it would move users to other shards."""

MAX_SHARDS = 1024
"""Upper bound of the setting: every bulk operation visits every shard."""

GLOBAL_TAG = "{g}"


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    segments: str = f"{GLOBAL_TAG}:segments"
    next_id: str = f"{GLOBAL_TAG}:nextid"
    deleting: str = f"{GLOBAL_TAG}:deleting"
    rollouts: str = f"{GLOBAL_TAG}:rollouts"
    events: str = f"{GLOBAL_TAG}:events"
    shards: str = f"{GLOBAL_TAG}:shards"
    """The deployment's number of logical shards, set once at initialisation."""
    trimmed: str = f"{GLOBAL_TAG}:trimmed"
    """Sorted set: history stream -> ms of its highest trim point (segments_core.retention)."""
    restore: str = f"{GLOBAL_TAG}:restore"
    """Hash: a restore from history is in progress (segments_restore); gone when it is done."""
    restore_lock: str = f"{GLOBAL_TAG}:restore:lock"
    """String with an expiry: the token of the one restore running now."""


GLOBAL = GlobalKeys()


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """The keys of one shard; see docs/design.md for what each holds."""

    shard: int
    tag: str
    seg_id: str
    seg_slug: str
    seg_dying: str
    seg_dead: str
    seg_rev: str
    seg_pct: str
    seg_hi: str
    counts: str
    users: str
    user_prefix: str
    due: str
    events: str

    def user(self, user_id: int) -> str:
        return f"{self.user_prefix}{user_id}"


def _shard_keys(shard: int) -> ShardKeys:
    tag = f"{{s{shard:02d}}}"
    return ShardKeys(
        shard=shard,
        tag=tag,
        seg_id=f"{tag}:seg:id",
        seg_slug=f"{tag}:seg:slug",
        seg_dying=f"{tag}:seg:dying",
        seg_dead=f"{tag}:seg:dead",
        seg_rev=f"{tag}:seg:rev",
        seg_pct=f"{tag}:seg:pct",
        seg_hi=f"{tag}:seg:hi",
        counts=f"{tag}:cnt",
        users=f"{tag}:users",
        user_prefix=f"{tag}:u:",
        due=f"{tag}:due",
        events=f"{tag}:events",
    )


class Keyspace:
    """The key layout of one deployment: its shards and the user -> shard map."""

    __slots__ = ("shard_keys", "shards")

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"the number of shards must be from 1 to {MAX_SHARDS}, got {shards}")
        self.shards = shards
        self.shard_keys: tuple[ShardKeys, ...] = tuple(_shard_keys(s) for s in range(shards))

    def shard_of(self, user_id: int) -> int:
        """The shard of a user: stable across processes, versions and hosts."""
        return zlib.crc32(str(user_id).encode()) % self.shards

    def for_user(self, user_id: int) -> ShardKeys:
        return self.shard_keys[self.shard_of(user_id)]

    def history_streams(self) -> list[str]:
        """Every stream the archiver consumes: the global one, then each shard's."""
        return [GLOBAL.events, *(k.events for k in self.shard_keys)]


def dead_letter_key(stream: str) -> str:
    """Dead-letter stream of a history stream; same hash tag, so same Cluster slot."""
    return f"{stream}:dead"


class ShardCountMismatch(ValueError):
    """The process is configured for another number of shards than the deployment has."""


async def load_keyspace(redis: Any, configured: int | None = None) -> Keyspace:
    """The deployment's keyspace, initialising it on first use.

    A new deployment takes ``configured`` (or DEFAULT_SHARDS) and keeps it in
    ``{g}:shards`` (SET NX: of two processes starting at once, one wins and
    both read its value). A process configured with another number refuses
    to start: its users would land on other shards than everyone else's.
    """
    wanted = DEFAULT_SHARDS if configured is None else configured
    Keyspace(wanted)  # validates the bounds before anything is written
    await redis.set(GLOBAL.shards, wanted, nx=True)
    stored = int(await redis.get(GLOBAL.shards))
    if configured is not None and stored != configured:
        raise ShardCountMismatch(
            f"SEGMENTS_SHARDS is {configured}, but this deployment was initialised with"
            f" {stored} shards; unset SEGMENTS_SHARDS or set it to {stored}"
        )
    return Keyspace(stored)
