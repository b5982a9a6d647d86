"""The deployment's number of shards, when Redis no longer says it.

Redis keeps it in ``{g}:shards`` (``segments_core.keys.load_keyspace``). A
Redis that lost everything lost that too, and a restore into the wrong number
would put users on shards the service never looks at. History still tells:
every event sits on its user's shard stream (``{sNN}:events``), and the shard
is ``crc32(user id) % shards``. The smallest number of shards that puts every
sampled user on the stream history has them on is the deployment's (with a
sample of a couple thousand users no other number fits).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from typing import Any

from segments_core.config import ConfigError
from segments_core.keys import DEFAULT_SHARDS, GLOBAL, MAX_SHARDS, Keyspace, load_keyspace

_SHARD_STREAM = re.compile(r"\{s(\d+)\}:events")


def _placements(sample: Iterable[tuple[str, int]]) -> list[tuple[int, int]]:
    """(crc32 of the user id, shard index) of each sampled event."""
    out = []
    for stream, user_id in sample:
        match = _SHARD_STREAM.fullmatch(stream)
        if match:
            out.append((zlib.crc32(str(user_id).encode()), int(match[1])))
    return out


def fits(shards: int, sample: Iterable[tuple[str, int]]) -> bool:
    return all(crc % shards == index for crc, index in _placements(sample))


def infer(sample: Iterable[tuple[str, int]]) -> int | None:
    """The number of shards the sampled (stream, user id) pairs were written with.

    None when history holds no membership event (any number fits).
    """
    placements = _placements(sample)
    if not placements:
        return None
    lowest = max(index for _, index in placements) + 1
    for shards in range(lowest, MAX_SHARDS + 1):
        if all(crc % shards == index for crc, index in placements):
            return shards
    raise ConfigError(
        "history's events are on shard streams that no number of shards explains;"
        " set SEGMENTS_SHARDS to the deployment's number"
    )


async def resolve(redis: Any, configured: int | None, sample: list[tuple[str, int]]) -> Keyspace:
    """The keyspace to restore into: Redis's, else SEGMENTS_SHARDS, else history's.

    Whichever it is must fit history, else the restore stops before writing.
    """
    stored = await redis.get(GLOBAL.shards)
    if stored is not None:
        keyspace = await load_keyspace(redis, configured)
    else:
        wanted = configured if configured is not None else infer(sample)
        keyspace = await load_keyspace(redis, wanted if wanted is not None else DEFAULT_SHARDS)
    if not fits(keyspace.shards, sample):
        raise ConfigError(
            f"this deployment has {keyspace.shards} shards, but history's events were"
            f" written with {infer(sample)}; restoring would put users on the wrong shards"
        )
    return keyspace
