"""``segments verify``: does Redis hold what history says? (Would a restore give it back?)

History (PostgreSQL, plus the streams' unarchived entries) is replayed the
way ``segments restore`` replays it, shard by shard, and compared with what
Redis holds:

- **missing**: history says member, Redis does not hold the membership;
- **extra**: Redis holds a membership history does not explain;
- **deadline**: both hold it, with other deadlines (or Redis's due index
  lacks it, so it would never expire);
- **marker**: both agree on membership but not on how: "p" (the rollout
  added the user, a ramp down removes them) against a hand-made one, or "x"
  (removed by hand from a cohort, rollouts leave them out) present on one
  side only;
- **segment**: a segment's description, percent, created_at, id, revision or
  member count differ, a shard's copy of the catalogue disagrees, or a
  deleted segment is not dead in a shard.

Cheap enough for a periodic audit: Redis is read in bounded steps (SSCAN /
HSCAN with a COUNT, and the read-only ``readUsers`` script for
:data:`~segments_restore.redis_state.USERS_PER_CALL` users of one shard a
call, about a millisecond; no KEYS, no long script); PostgreSQL streams the
events user by user through a server-side cursor
(``segments_restore.history``); memory holds one batch of events and the
ids of the users history names (8 bytes each: 8 MB for a million users), to
find the users only Redis knows. On a live service a user changed while
verify runs would look different: every difference of a user (or segment)
with an event past the snapshot's stream horizon is set aside and only
counted ("changed while verifying").

Known users are not compared: registering a user writes no history event
(a user with no membership leaves no trace), so history cannot tell them;
their numbers on each side are printed for information.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import sys
import time
from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from segments_core.clock import to_datetime
from segments_core.config import ConfigError
from segments_core.keys import GLOBAL, Keyspace, ShardKeys
from segments_core.redis_client import connect
from segments_core.streams import EntryId, format_id
from segments_restore import redis_state, settings, shards
from segments_restore.catalogue import Catalogue
from segments_restore.history import History, UserEvents
from segments_restore.progress import Reporter
from segments_restore.redis_state import (
    KEYS_PER_COMMAND,
    SCAN_COUNT,
    USERS_PER_CALL,
    RestoreError,
    chunks,
)
from segments_restore.replay import BY_PERCENT, REMOVED_BY_HAND, deadline_of, is_member, replay_user
from segments_restore.scripts import READ_USERS

KINDS = ("missing", "extra", "deadline", "marker", "segment")
READS_IN_FLIGHT = 4
"""readUsers calls sent at once: a client of Redis waits behind at most these
(about 1 ms each), whatever the number of shards."""
EXIT_DIFFERENT = 1
EXIT_CANNOT = 3
"""A restore is in progress (or was interrupted): nothing to compare yet."""


class Difference(NamedTuple):
    kind: str
    text: str
    user_id: int | None = None
    slug: str | None = None


class VerifyReport(msgspec.Struct, kw_only=True):
    differences: list[Difference]
    """Those that count (changed-while-verifying ones are taken out)."""
    by_kind: dict[str, int]
    changed_meanwhile: int
    users_in_history: int
    known_only_in_redis: int
    """Users Redis knows that history never named: registered with no membership."""
    known_only_in_history: int
    """Users history names that Redis does not know: deleted while holding nothing."""
    memberships: int
    history_events: int
    seconds: float

    @property
    def same(self) -> bool:
        return not self.differences


def _when(ms: int) -> str:
    return "no deadline" if ms == 0 else to_datetime(ms).isoformat(timespec="milliseconds")


def _state_text(state: str | None) -> str:
    if state is None:
        return "absent"
    if state == REMOVED_BY_HAND:
        return "marker x (removed by hand)"
    if state == BY_PERCENT:
        return "member through the rollout (p)"
    return f"member by hand, {_when(deadline_of(state))}"


class _Held(NamedTuple):
    """One user as Redis holds it."""

    known: bool
    fields: dict[int, str]
    due: dict[int, int]
    """segment id -> the score of ``<uid>:<id>`` in the due index."""


class _Shard:
    """What one shard's comparison accumulates: members per segment, by history."""

    def __init__(self, keys: ShardKeys) -> None:
        self.keys = keys
        self.counts: dict[int, int] = defaultdict(int)


class Verifier:
    def __init__(self, redis: Any, keyspace: Keyspace, catalogue: Catalogue) -> None:
        self.redis = redis
        self.keyspace = keyspace
        self.catalogue = catalogue
        self.differences: list[Difference] = []
        self.known_only_in_redis = 0
        self.known_only_in_history = 0
        self.memberships = 0
        self.users = 0
        self._gate = asyncio.Semaphore(READS_IN_FLIGHT)
        self.seen = array("q")
        """Every user id history names, ascending (they come by id): 8 bytes a user."""

    def in_history(self, user_id: int) -> bool:
        i = bisect.bisect_left(self.seen, user_id)
        return i < len(self.seen) and self.seen[i] == user_id

    def add(
        self, kind: str, text: str, user_id: int | None = None, slug: str | None = None
    ) -> None:
        self.differences.append(Difference(kind, text, user_id, slug))

    # -- users ----------------------------------------------------------------------------

    async def read(self, keys: ShardKeys, user_ids: list[int]) -> list[_Held]:
        """What Redis holds of these users of one shard: one bounded readUsers call."""
        async with self._gate:
            reply = await READ_USERS(
                self.redis, [keys.users, keys.due], [keys.user_prefix, *user_ids]
            )
        held = []
        for line in _t(reply).split("\n"):
            words = line.split(" ")
            fields, due = {}, {}
            for j in range(1, len(words), 3):
                segment_id = int(words[j])
                fields[segment_id] = words[j + 1]
                if words[j + 2] != "-":
                    due[segment_id] = int(float(words[j + 2]))
            held.append(_Held(words[0] == "1", fields, due))
        return held

    def users_batch(self, shard: _Shard, batch: list[UserEvents], held: list[_Held]) -> None:
        """Compares a batch of one shard's users that history names with what Redis holds."""
        for user, h in zip(batch, held, strict=True):
            uid = user.user_id
            self.users += 1
            replayed = replay_user(uid, user.events, self.catalogue)
            expected = replayed.by_segment_id()
            if replayed.known and not h.known:
                self.known_only_in_history += 1
            for segment_id, state in expected.items():
                if is_member(state):
                    shard.counts[segment_id] += 1
            self._compare_user(uid, expected, h)

    async def unknown_users(self, shard: _Shard) -> None:
        """Users Redis knows that history does not name: any membership is extra."""
        keys = shard.keys
        cursor: Any = 0
        while True:
            cursor, members = await self.redis.sscan(keys.users, cursor, count=SCAN_COUNT)
            others = [int(m) for m in members if not self.in_history(int(m))]
            for group in chunks(others, USERS_PER_CALL):
                for uid, h in zip(group, await self.read(keys, group), strict=True):
                    if h.fields:
                        self._compare_user(uid, {}, h)
                    else:
                        self.known_only_in_redis += 1
            if int(cursor) == 0:
                return

    def _compare_user(self, uid: int, expected: dict[int, str], held: _Held) -> None:
        """Records the user's differences (``expected``: history's fields)."""
        actual = held.fields
        if expected == actual:  # the common case, quickly: members counted, due checked
            for segment_id, state in actual.items():
                if state != REMOVED_BY_HAND:
                    self.memberships += 1
                    if state != "0" and state != BY_PERCENT:
                        self._check_due(uid, segment_id, int(state), held)
            return
        for segment_id in expected.keys() | actual.keys():
            e, a = expected.get(segment_id), actual.get(segment_id)
            inc = self.catalogue.by_id.get(segment_id)
            slug = inc.slug if inc else f"<segment id {segment_id}>"
            where = f"user {uid} segment {slug}"
            em = e is not None and is_member(e)
            am = a is not None and is_member(a)
            if am:
                assert a is not None
                self.memberships += 1
                if deadline_of(a):
                    self._check_due(uid, segment_id, deadline_of(a), held)
            if em == am and e == a:
                continue
            if em and not am:
                kind = "missing"
            elif am and not em:
                kind = "extra"
            elif em and am:
                kind = "marker" if (e == BY_PERCENT) != (a == BY_PERCENT) else "deadline"
            elif inc is not None and inc.live:
                kind = "marker"  # neither a member, "x" on one side only
            else:
                continue  # markers of deleted segments go when the purge reaches them
            self.add(kind, f"{where}: Redis {_state_text(a)}, history {_state_text(e)}", uid, slug)

    def _check_due(self, uid: int, segment_id: int, deadline: int, held: _Held) -> None:
        """A membership with a deadline must be in the due index, else it never expires."""
        due = held.due.get(segment_id)
        if due == deadline:
            return
        inc = self.catalogue.by_id.get(segment_id)
        slug = inc.slug if inc else f"<segment id {segment_id}>"
        self.add(
            "deadline",
            f"user {uid} segment {slug}: deadline {_when(deadline)} is not in the due index"
            f" ({'absent' if due is None else _when(due)}): it would never expire",
            uid,
            slug,
        )

    # -- segments -------------------------------------------------------------------------

    async def shard_catalogue(self, shard: _Shard) -> None:
        """The shard's copy of the catalogue, its dead ids and its member counts.

        The shard's revision is not compared: a change of description alone
        raises the catalogue's and registers nothing in the shards, and
        history does not say which changes named a percent.
        """
        k = shard.keys
        pipe = self.redis.pipeline(transaction=False)
        for key in (k.seg_id, k.seg_slug, k.seg_pct, k.seg_dying, k.counts):
            pipe.hgetall(key)
        seg_id, seg_slug, seg_pct, dying, counts = (
            {_t(a): _t(b) for a, b in h.items()} for h in await pipe.execute()
        )
        live = {i.slug: i for i in self.catalogue.live()}
        where = f"shard {k.tag}"
        for slug in live.keys() | seg_id.keys():
            inc = live.get(slug)
            if inc is None:
                self.add(
                    "segment",
                    f"{where}: {slug} is registered (id {seg_id[slug]}) but"
                    " deleted or unknown in history",
                    slug=slug,
                )
                continue
            sid = str(inc.id)
            got = (seg_id.get(slug), seg_slug.get(sid), int(seg_pct.get(sid, 0)))
            want = (sid, slug, inc.percent_x100)
            if got != want:
                self.add(
                    "segment",
                    f"{where}: {slug} registered as (id, slug, percent x100) {got}, history {want}",
                    slug=slug,
                )
            n = int(counts.get(sid, 0))
            if n != shard.counts.get(inc.id, 0):
                self.add(
                    "segment",
                    f"{where}: {slug} counts {n} members, history {shard.counts.get(inc.id, 0)}",
                    slug=slug,
                )
        deleted = [i for i in self.catalogue.deleted() if str(i.id) not in dying]
        for group in chunks(deleted, KEYS_PER_COMMAND):
            flags = await self.redis.execute_command(
                "SMISMEMBER", k.seg_dead, *(i.id for i in group)
            )
            for inc, dead in zip(group, flags, strict=True):
                if not int(dead):
                    self.add(
                        "segment",
                        f"{where}: {inc.slug} (id {inc.id}) was deleted"
                        " but is not dead in this shard",
                        slug=inc.slug,
                    )

    async def global_catalogue(self) -> None:
        stored: dict[str, dict[str, Any]] = {}
        cursor: Any = 0
        while True:
            cursor, page = await self.redis.hscan(GLOBAL.segments, cursor, count=SCAN_COUNT)
            stored.update({_t(slug): json.loads(raw) for slug, raw in page.items()})
            if int(cursor) == 0:
                break
        live = {i.slug: i for i in self.catalogue.live()}
        for slug in live.keys() | stored.keys():
            inc, doc = live.get(slug), stored.get(slug)
            if inc is None:
                self.add(
                    "segment", f"segment {slug}: in Redis, deleted or unknown in history", slug=slug
                )
            elif doc is None:
                self.add("segment", f"segment {slug}: in history, not in Redis", slug=slug)
            else:
                want = json.loads(inc.document())
                got = {f: doc.get(f) for f in want}
                if got.get("rev") is None:
                    got["rev"] = 1
                diffs = [
                    f"{f} Redis {got[f]!r}, history {want[f]!r}" for f in want if got[f] != want[f]
                ]
                if diffs:
                    self.add("segment", f"segment {slug}: " + "; ".join(diffs), slug=slug)
        next_id = await self.redis.get(GLOBAL.next_id)
        if int(next_id or 0) < self.catalogue.max_id:
            self.add(
                "segment",
                f"next segment id {int(next_id or 0)} is below id"
                f" {self.catalogue.max_id} history has handed out",
            )


def _t(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _changed_since(redis: Any, horizons: dict[str, EntryId]) -> tuple[set[int], set[str]]:
    """Users and slugs with an event after each stream's horizon (bounded XRANGE steps)."""
    users: set[int] = set()
    slugs: set[str] = set()
    for stream, horizon in horizons.items():
        start = "(" + format_id(horizon)
        while True:
            batch = await redis.xrange(stream, min=start, max="+", count=SCAN_COUNT)
            for entry_id, fields in batch:
                if b"u" in fields:
                    users.add(int(fields[b"u"]))
                if b"s" in fields:
                    slugs.add(fields[b"s"].decode())
                start = "(" + _t(entry_id)
            if len(batch) < SCAN_COUNT:
                break
    return users, slugs


async def _keyspace(redis: Any, history: History, configured: int | None) -> Keyspace:
    """Redis's keyspace, read only (verify never writes): stored, else configured or history's."""
    stored = await redis.get(GLOBAL.shards)
    if stored is not None:
        return Keyspace(int(stored))
    inferred = configured or shards.infer(await history.shard_sample())
    return Keyspace(inferred or 16)


async def verify(
    redis_url: str,
    database_url: str,
    *,
    configured_shards: int | None = None,
    reporter: Reporter | None = None,
) -> VerifyReport:
    started = time.monotonic()
    say = reporter or Reporter()
    redis = await connect(redis_url, decode_responses=False, socket_timeout=30.0)
    history = await History.connect(database_url)
    try:
        if await redis_state.marker(redis) is not None:
            raise RestoreError(
                "a restore started and did not finish ({g}:restore): run `segments restore`"
                " again before verifying"
            )
        keyspace = await _keyspace(redis, history, configured_shards)
        say.step("reading the streams' unarchived entries")
        snapshot = await history.stage_streams(redis, keyspace.history_streams())
        await history.begin()
        catalogue = Catalogue.from_events(await history.lifecycle())
        total = await history.count_memberships()
        v = Verifier(redis, keyspace, catalogue)
        say.step("comparing users", total)
        shard_state = [_Shard(k) for k in keyspace.shard_keys]
        # Redis reads the next batch while this process compares the last one.
        previous: list[tuple[_Shard, list[UserEvents], asyncio.Future[list[_Held]]]] = []
        async for batch in history.users():
            groups: dict[int, list[UserEvents]] = defaultdict(list)
            for user in batch:
                v.seen.append(user.user_id)
                groups[keyspace.shard_of(user.user_id)].append(user)
            # A call per shard and few hundred users (one Cluster slot each).
            reads = [
                (shard_state[shard], group, asyncio.ensure_future(
                    v.read(shard_state[shard].keys, [u.user_id for u in group])))
                for shard, users in groups.items()
                for group in chunks(users, USERS_PER_CALL)
            ]  # fmt: skip
            for shard, group, read in previous:
                v.users_batch(shard, group, await read)
                say.advance(sum(len(u.events) for u in group))
            previous = reads
        for shard, group, read in previous:
            v.users_batch(shard, group, await read)
            say.advance(sum(len(u.events) for u in group))
        await history.end()
        say.step("looking for users only Redis knows, and each shard's catalogue")
        for shard in shard_state:
            await v.unknown_users(shard)
            await v.shard_catalogue(shard)
        await v.global_catalogue()
        changed = 0
        differences = v.differences
        if differences:
            users, slugs = await _changed_since(redis, snapshot.horizons)
            kept = [
                d
                for d in differences
                if d.user_id not in users and (d.user_id is not None or d.slug not in slugs)
            ]
            changed, differences = len(differences) - len(kept), kept
    finally:
        await history.close()
        await redis.aclose()
    by_kind = Counter(d.kind for d in differences)
    return VerifyReport(
        differences=differences,
        by_kind={k: by_kind.get(k, 0) for k in KINDS},
        changed_meanwhile=changed,
        users_in_history=v.users,
        known_only_in_redis=v.known_only_in_redis,
        known_only_in_history=v.known_only_in_history,
        memberships=v.memberships,
        history_events=total,
        seconds=time.monotonic() - started,
    )


def _print(report: VerifyReport, limit: int) -> None:
    for d in report.differences[:limit]:
        print(f"{d.kind}: {d.text}")
    if len(report.differences) > limit:
        print(f"... and {len(report.differences) - limit:,} more (--limit)")
    counts = ", ".join(f"{n:,} {k}" for k, n in report.by_kind.items())
    verdict = "same" if report.same else "DIFFERENT"
    print(
        f"{verdict}: {report.users_in_history:,} users and {report.history_events:,} events of"
        f" history against {report.memberships:,} memberships in Redis, in"
        f" {report.seconds:.1f} s; differences: {counts}"
    )
    if report.changed_meanwhile:
        print(
            f"not counted: {report.changed_meanwhile:,} differences of users or segments"
            " changed while verifying"
        )
    print(
        "known users (not compared, registration leaves no history):"
        f" {report.known_only_in_redis:,} known to Redis only,"
        f" {report.known_only_in_history:,} to history only"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segments verify",
        description="Compare Redis with the history (PostgreSQL and the streams); exit code 1"
        " when they differ.",
    )
    p.add_argument("--limit", type=int, default=1000, help="differences printed (default 1000)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        redis_url, database_url, configured = settings.read()
    except ConfigError as exc:
        print(f"segments verify: configuration error: {exc}", file=sys.stderr)
        return 2
    with Reporter() as reporter:
        try:
            report = asyncio.run(
                verify(redis_url, database_url, configured_shards=configured, reporter=reporter)
            )
        except RestoreError as exc:
            reporter.say(f"segments verify: {exc}")
            return EXIT_CANNOT
    _print(report, args.limit)
    return 0 if report.same else EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
