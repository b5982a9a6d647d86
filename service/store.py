"""Segments and memberships in Redis: the domain operations.

Every write is one Lua script (``lua/``); this module picks the keys,
validates nothing the edge has not already validated, and turns script
replies into domain values and errors. It knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

import msgspec
from redis.exceptions import NoScriptError

from segments_core.clock import Clock
from segments_core.keys import GLOBAL, Keyspace, ShardKeys
from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service import metrics
from service.errors import InvalidRequest, SegmentExists, SegmentNotFound, UnknownSegments
from service.scripts import NOW, LuaScript, load_scripts

PURGE_SCAN_COUNT = 1_000
"""Users looked at per purge call: keeps one call to a few milliseconds."""
ROLLOUT_SCAN_COUNT = 1_000
"""Users looked at per rollout call (a SHA-1 each): a few milliseconds."""
BULK_SHARDS_IN_FLIGHT = 2
"""Shards a rollout or purge works on at once. Redis runs one script at a
time: with all 16 queued, a lookup waited behind 16 calls (~330 ms at 1M
users); with 2 it waits behind at most 2 (~20 ms), for the same total time."""
SWEEP_LIMIT = 1_000
"""Due memberships expired per sweeper call."""

_T = TypeVar("_T")


class Membership(NamedTuple):
    slug: str
    deadline_ms: int
    """0 when the membership has no deadline."""


class Segment(msgspec.Struct, kw_only=True, frozen=True):
    id: int
    slug: str
    description: str
    percent_x100: int
    """0 when the segment has no percent rollout."""
    created_at_ms: int
    rev: int = 1
    members: int = 0


class AddItem(NamedTuple):
    slug: str
    deadline_ms: int
    """0 for none."""
    ttl_ms: int = 0
    """0 for none; else the deadline is the script's time plus this, on the
    Redis server's clock (give a deadline or a ttl, not both)."""


def _memberships(flat: Sequence[Any]) -> list[Membership]:
    pairs = [Membership(flat[i], int(flat[i + 1])) for i in range(0, len(flat), 2)]
    pairs.sort()
    return pairs


def _segment(slug: str, raw: str) -> Segment:
    doc = json.loads(raw)
    return Segment(
        id=int(doc["id"]),
        slug=slug,
        description=doc["description"],
        percent_x100=int(doc["pct"]),
        created_at_ms=int(doc["created_at"]),
        rev=int(doc.get("rev", 1)),
    )


class Store:
    """The service's state, in one Redis or one Redis Cluster."""

    def __init__(
        self,
        redis: Any,
        clock: Clock | None = None,
        scripts_via: Any = None,
        keyspace: Keyspace | None = None,
    ) -> None:
        """``redis``: a redis-py client (single or Cluster) for plain commands;
        ``clock``: for tests only, a clock that drives time (ms since the
        epoch) through the test build of the scripts; without one (always in
        production) every script reads the Redis server's clock itself;
        ``scripts_via``: where scripts run, e.g. a ``service.resp.RespConnection``
        to the same single Redis (default: ``redis``); ``keyspace``: the
        deployment's shards (``segments_core.keys.load_keyspace``; default 16)."""
        self.redis = redis
        self.keyspace = keyspace or Keyspace()
        self.conn = redis if scripts_via is None else scripts_via
        self.clock = clock
        self.scripts: dict[str, LuaScript] = load_scripts(clock=clock)
        s = self.scripts
        self._get = s["getMemberships"]
        self._change = s["changeMemberships"]

    # --- segments ---------------------------------------------------------

    async def create_segment(self, slug: str, description: str, percent_x100: int) -> Segment:
        reply = await self.scripts["createSegment"](
            self.conn,
            [GLOBAL.segments, GLOBAL.next_id, GLOBAL.events, GLOBAL.rollouts],
            [slug, description, percent_x100, NOW],
        )
        if reply[0] == 1:
            raise SegmentExists(f"segment {slug} exists", {"slug": slug})
        segment = _segment(slug, reply[1])
        await self._register_everywhere(segment)
        if segment.percent_x100:
            await self._rollout(segment)
        return await self.get_segment(slug)

    async def update_segment(
        self, slug: str, *, description: str | None = None, percent_x100: int | None = None
    ) -> Segment:
        """Changes what is given (None: unchanged; percent 0 ends the rollout)."""
        reply = await self.scripts["updateSegment"](
            self.conn,
            [GLOBAL.segments, GLOBAL.events, GLOBAL.rollouts],
            [
                slug,
                "0" if description is None else "1",
                description or "",
                "0" if percent_x100 is None else "1",
                percent_x100 or 0,
                NOW,
            ],
        )
        if reply[0] == 2:
            raise SegmentNotFound(f"segment {slug} not found", {"slug": slug})
        segment = _segment(slug, reply[1])
        if percent_x100 is not None:
            await self._register_everywhere(segment)
            await self._rollout(segment)
        return await self.get_segment(slug)

    async def delete_segment(self, slug: str) -> None:
        reply = await self.scripts["deleteSegment"](
            self.conn, [GLOBAL.segments, GLOBAL.deleting, GLOBAL.events], [slug, NOW]
        )
        if reply[0] == 2:
            raise SegmentNotFound(f"segment {slug} not found", {"slug": slug})
        await self._finish_deletion(int(reply[1]), slug)

    async def _finish_deletion(self, segment_id: int, slug: str) -> None:
        retire = self.scripts["retireSegment"]
        await asyncio.gather(
            *(
                retire(
                    self.conn,
                    [k.seg_id, k.seg_slug, k.seg_pct, k.seg_hi, k.seg_dying, k.seg_rev],
                    [segment_id, slug, NOW],
                )
                for k in self.keyspace.shard_keys
            )
        )
        await self._each_shard_bounded(lambda k: self._purge_shard(k, segment_id))
        await self.redis.hdel(GLOBAL.deleting, str(segment_id))

    async def _purge_shard(self, k: ShardKeys, segment_id: int) -> None:
        purge = self.scripts["purgeSegment"]
        cursor = "0"
        while True:
            cursor = await purge(
                self.conn,
                [k.users, k.seg_dying, k.seg_dead, k.counts, k.due, k.events],
                [k.user_prefix, segment_id, cursor, PURGE_SCAN_COUNT],
            )
            if cursor == "0":
                return

    async def _register_everywhere(self, segment: Segment) -> None:
        register = self.scripts["registerSegment"]
        await asyncio.gather(
            *(
                register(
                    self.conn,
                    [
                        k.seg_id,
                        k.seg_slug,
                        k.seg_pct,
                        k.seg_hi,
                        k.seg_dying,
                        k.seg_dead,
                        k.seg_rev,
                    ],
                    [segment.id, segment.slug, segment.percent_x100, segment.rev, NOW],
                )
                for k in self.keyspace.shard_keys
            )
        )

    async def _each_shard_bounded(self, work: Callable[[ShardKeys], Awaitable[_T]]) -> list[_T]:
        """Runs ``work`` for every shard, at most BULK_SHARDS_IN_FLIGHT at once."""
        gate = asyncio.Semaphore(BULK_SHARDS_IN_FLIGHT)

        async def gated(k: ShardKeys) -> _T:
            async with gate:
                return await work(k)

        return await asyncio.gather(*(gated(k) for k in self.keyspace.shard_keys))

    async def _rollout(self, segment: Segment) -> tuple[int, int]:
        """Makes the segment's current percent true of every known user.

        Returns (added, removed). The catalogue script marked the rollout in
        ``{g}:rollouts``; the mark goes only when it is done, so ``repair``
        resumes it if this process dies.
        """
        results = await self._each_shard_bounded(lambda k: self._rollout_shard(k, segment.id))
        await self.scripts["finishRollout"](self.conn, [GLOBAL.rollouts], [segment.id, segment.rev])
        return sum(r[0] for r in results), sum(r[1] for r in results)

    async def _rollout_shard(self, k: ShardKeys, segment_id: int) -> tuple[int, int]:
        rollout = self.scripts["rolloutSegment"]
        cursor, added, removed = "0", 0, 0
        while True:
            cursor, a, r = await rollout(
                self.conn,
                [k.users, k.seg_slug, k.seg_pct, k.seg_hi, k.counts, k.events],
                [k.user_prefix, segment_id, cursor, ROLLOUT_SCAN_COUNT, NOW],
            )
            added, removed = added + int(a), removed + int(r)
            if cursor == "0":
                return added, removed

    async def get_segment(self, slug: str) -> Segment:
        raw = await self.redis.hget(GLOBAL.segments, slug)
        if raw is None:
            raise SegmentNotFound(f"segment {slug} not found", {"slug": slug})
        segment = _segment(slug, raw)
        counts = await self._member_counts()
        return msgspec.structs.replace(segment, members=counts.get(segment.id, 0))

    async def _catalogue(self) -> list[Segment]:
        catalogue = await self.redis.hgetall(GLOBAL.segments)
        return [_segment(slug, raw) for slug, raw in catalogue.items()]

    async def list_segments(self) -> list[Segment]:
        segments = sorted(await self._catalogue(), key=lambda s: s.slug)
        counts = await self._member_counts()
        return [msgspec.structs.replace(s, members=counts.get(s.id, 0)) for s in segments]

    async def _member_counts(self) -> dict[int, int]:
        # Counts are exact once due memberships are swept: sweep first.
        await self.sweep()
        totals: dict[int, int] = defaultdict(int)
        for shard_counts in await asyncio.gather(
            *(self.redis.hgetall(k.counts) for k in self.keyspace.shard_keys)
        ):
            for segment_id, n in shard_counts.items():
                totals[int(segment_id)] += int(n)
        return totals

    # --- users ------------------------------------------------------------

    async def register_users(self, user_ids: Iterable[int]) -> int:
        by_shard: dict[int, list[int]] = defaultdict(list)
        for uid in dict.fromkeys(user_ids):
            by_shard[self.keyspace.shard_of(uid)].append(uid)
        register = self.scripts["registerUsers"]
        created = await asyncio.gather(
            *(
                register(
                    self.conn,
                    [k.users, k.seg_slug, k.seg_pct, k.counts, k.events],
                    [k.user_prefix, NOW, *by_shard[k.shard]],
                )
                for k in self.keyspace.shard_keys
                if by_shard[k.shard]
            )
        )
        return sum(int(n) for n in created)

    async def delete_user(self, user_id: int) -> int:
        k = self.keyspace.for_user(user_id)
        return int(
            await self.scripts["deleteUser"](
                self.conn,
                [k.user(user_id), k.users, k.seg_slug, k.seg_dying, k.counts, k.due, k.events],
                [user_id, NOW],
            )
        )

    def _get_keys(self, user_id: int) -> list[str]:
        k = self.keyspace.for_user(user_id)
        return [k.user(user_id), k.users, k.seg_slug, k.seg_pct, k.counts, k.events]

    async def user_segments(self, user_id: int) -> list[Membership]:
        flat = await self._get(self.conn, self._get_keys(user_id), [user_id, NOW])
        return _memberships(flat)

    async def lookup(self, user_ids: Sequence[int]) -> list[list[Membership]]:
        """Segments of many users in one round trip, in the order given."""
        now = self._get.time_arg()
        metrics.REQUESTS.script_calls(self._get.name, len(user_ids))
        for attempt in (1, 2):
            pipe = self.conn.pipeline(transaction=False)
            for uid in user_ids:
                pipe.execute_command(
                    "EVALSHA", self._get.sha, self._get.num_keys, *self._get_keys(uid), uid, now
                )
            try:
                replies = await pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                await self.conn.script_load(self._get.source)
                continue
            except REDIS_CLIENT_ERRORS as exc:
                metrics.redis_error(exc, self._get.name)
                raise
            return [_memberships(flat) for flat in replies]
        raise AssertionError("unreachable")

    async def change_user_segments(
        self, user_id: int, add: Sequence[AddItem], remove: Sequence[str]
    ) -> list[Membership]:
        k = self.keyspace.for_user(user_id)
        args: list[Any] = [user_id, NOW, len(add)]
        for item in add:
            args += (item.slug, item.deadline_ms, item.ttl_ms)
        args += remove
        reply = await self._change(
            self.conn,
            [
                k.user(user_id),
                k.users,
                k.seg_id,
                k.seg_slug,
                k.seg_pct,
                k.seg_dying,
                k.counts,
                k.due,
                k.events,
            ],
            args,
        )
        if reply[0] == 3:
            raise UnknownSegments(sorted(set(reply[1:])))
        if reply[0] == 4:
            slug = reply[1]
            raise InvalidRequest(f"expires_at of {slug} is not in the future", {"slug": slug})
        return _memberships(reply[1:])

    # --- background work ----------------------------------------------------

    async def sweep(self) -> int:
        """Expires every due membership; returns how many entries were handled."""
        expire = self.scripts["expireMemberships"]

        async def shard(k: ShardKeys) -> int:
            total = 0
            while True:
                n = int(
                    await expire(
                        self.conn,
                        [k.due, k.seg_slug, k.seg_dying, k.counts, k.events, k.seg_pct],
                        [k.user_prefix, NOW, SWEEP_LIMIT],
                    )
                )
                total += n
                if n < SWEEP_LIMIT:
                    return total

        return sum(await asyncio.gather(*(shard(k) for k in self.keyspace.shard_keys)))

    async def repair(self) -> None:
        """Finishes work a crashed process left half done.

        Every step is idempotent, so running it beside a live request that
        does the same work only costs time: pending deletions are purged to
        the end; every catalogued segment is registered in every shard and
        its unfinished rollout run again.
        """
        for segment_id, raw in (await self.redis.hgetall(GLOBAL.deleting)).items():
            doc = json.loads(raw)
            await self._finish_deletion(int(segment_id), doc["slug"])
        rollouts = await self.redis.hgetall(GLOBAL.rollouts)
        for slug, raw in (await self.redis.hgetall(GLOBAL.segments)).items():
            segment = _segment(slug, raw)
            await self._register_everywhere(segment)
            if str(segment.id) in rollouts:
                await self._rollout(segment)
        stale = set(rollouts) - {str(s.id) for s in await self._catalogue()}
        if stale:
            await self.redis.hdel(GLOBAL.rollouts, *stale)
