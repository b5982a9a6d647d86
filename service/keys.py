"""Every Redis key name of the service, and the user -> shard mapping.

Nothing else in the code base formats a key. Keys that one Lua script
touches share a hash tag (``{sNN}`` for a shard, ``{g}`` for the global
catalogue), so every script runs within one Redis Cluster slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SHARDS = 16
"""Logical shards; each is one hash tag and so one Cluster slot. Fixed:
changing it moves every user to another shard (a data migration)."""

GLOBAL_TAG = "{g}"


def shard_of(user_id: int) -> int:
    """The shard of a user: stable across processes, versions and hosts."""
    return zlib.crc32(str(user_id).encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class GlobalKeys:
    segments: str = f"{GLOBAL_TAG}:segments"
    next_id: str = f"{GLOBAL_TAG}:nextid"
    deleting: str = f"{GLOBAL_TAG}:deleting"
    rollouts: str = f"{GLOBAL_TAG}:rollouts"
    events: str = f"{GLOBAL_TAG}:events"


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


SHARD_KEYS: tuple[ShardKeys, ...] = tuple(_shard_keys(s) for s in range(SHARDS))


def for_user(user_id: int) -> ShardKeys:
    return SHARD_KEYS[shard_of(user_id)]


def dead_letter_key(stream: str) -> str:
    """Dead-letter stream of a history stream; same hash tag, so same Cluster slot."""
    return f"{stream}:dead"


def history_streams() -> list[str]:
    """Every stream the archiver consumes: the global one, then each shard's."""
    return [GLOBAL.events, *(k.events for k in SHARD_KEYS)]
