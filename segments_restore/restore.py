"""``segments restore``: Redis rebuilt from history alone.

What it writes is what the Lua scripts would have left had Redis never been
lost: the catalogue (description, percent, created_at, id, revision), each
shard's copy of it (deleted ids stay dead), the known users, every live
membership with its deadline, the percent markers ("p" for users the rollout
added, "x" for users removed by hand from a cohort), the due index and the
member counts. Memberships whose deadline passed meanwhile are not written;
their ``ttl`` removals are, into the streams at the deadline as the sweeper
would have (the archiver stores them). Members of segments whose deletion
the loss cut short get their ``segment_deleted`` removals the same way.
Every percent segment is marked for the API's repair, which finishes a
rollout the loss interrupted (a no-op when it had finished).

Steps (docs in README "Operations"): lock, marker, streams prepared and
copied, state wiped, catalogue, users shard by shard, marker cleared. Killed
anywhere, it is run again (no ``--replace`` needed while the marker is
there) and converges: the removals the first run wrote are history by then,
so they are replayed, not written twice.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec

from segments_core.clock import Clock
from segments_core.config import ConfigError
from segments_core.keys import GLOBAL, Keyspace
from segments_core.redis_client import connect
from segments_restore import faults, redis_state, settings, shards
from segments_restore.catalogue import Catalogue
from segments_restore.history import History
from segments_restore.progress import Reporter
from segments_restore.redis_state import (
    KEYS_PER_COMMAND,
    InFlight,
    RestoreError,
    ShardWriter,
    chunks,
)
from segments_restore.replay import BY_PERCENT, REMOVED_BY_HAND, is_member, replay_user, settle

EXIT_REFUSED = 3
"""Exit code when Redis holds state and ``--replace`` was not given."""


class RestoreReport(msgspec.Struct, kw_only=True):
    shards: int
    segments: int
    deleted_segments: int
    users: int
    memberships: int
    by_percent: int
    removed_by_hand: int
    ttl_removals: int
    deletion_removals: int
    stream_entries: int
    skipped_entries: int
    history_events: int
    anomalies: int
    orphans: int
    resumed: bool
    seconds: float

    def lines(self) -> list[str]:
        return [
            f"restored {self.memberships:,} memberships of {self.users:,} known users"
            f" ({self.by_percent:,} through a rollout, 'p'; {self.removed_by_hand:,}"
            f" markers 'x') and {self.segments:,} segments ({self.deleted_segments:,}"
            f" deleted ones kept dead) over {self.shards} shards, in {self.seconds:.1f} s",
            f"history: {self.history_events:,} membership events"
            f" ({self.stream_entries:,} stream entries read, {self.skipped_entries:,}"
            " broke the stream contract and were skipped)",
            f"written to history: {self.ttl_removals:,} ttl removals (deadline passed),"
            f" {self.deletion_removals:,} removals of deleted segments",
            *(
                [f"history gaps: {self.anomalies:,} events contradicting the state before them"]
                if self.anomalies
                else []
            ),
            *(
                [f"not restorable: {self.orphans:,} memberships of slugs never created in history"]
                if self.orphans
                else []
            ),
        ]


async def _write_catalogue(redis: Any, keyspace: Keyspace, catalogue: Catalogue) -> None:
    live = catalogue.live()
    dead = [str(i.id) for i in catalogue.deleted()]
    pipe = redis.pipeline(transaction=False)
    for group in chunks(live, KEYS_PER_COMMAND):
        pipe.hset(GLOBAL.segments, mapping={i.slug: i.document() for i in group})
    if catalogue.max_id:
        pipe.set(GLOBAL.next_id, catalogue.max_id)
    await pipe.execute()
    for k in keyspace.shard_keys:
        pipe = redis.pipeline(transaction=False)
        for group in chunks(live, KEYS_PER_COMMAND):
            pipe.hset(k.seg_id, mapping={i.slug: i.id for i in group})
            pipe.hset(k.seg_slug, mapping={i.id: i.slug for i in group})
            pipe.hset(k.seg_rev, mapping={i.id: i.rev for i in group})
            pct = {i.id: i.percent_x100 for i in group if i.percent_x100}
            if pct:
                pipe.hset(k.seg_pct, mapping=pct)
            hi = {i.id: i.hi for i in group if i.hi}
            if hi:
                pipe.hset(k.seg_hi, mapping=hi)
        for ids in chunks(dead, KEYS_PER_COMMAND):
            pipe.sadd(k.seg_dead, *ids)
        await pipe.execute()


async def _mark_rollouts(redis: Any, catalogue: Catalogue) -> None:
    """Every percent segment marked as a rollout to finish (store.repair runs it)."""
    marks = {i.id: i.rev for i in catalogue.live() if i.percent_x100}
    for group in chunks(list(marks.items()), KEYS_PER_COMMAND):
        await redis.hset(GLOBAL.rollouts, mapping=dict(group))


async def restore(
    redis_url: str,
    database_url: str,
    *,
    replace: bool = False,
    configured_shards: int | None = None,
    clock: Clock | None = None,
    reporter: Reporter | None = None,
) -> RestoreReport:
    """Rebuilds Redis at ``redis_url`` from the history at ``database_url`` (module doc).

    Deadlines are judged by the Redis server's clock, as the scripts judge
    them; ``clock`` replaces it in tests that drive time by hand.

    Raises :class:`RestoreError` when Redis holds state and ``replace`` is
    false, or another restore runs.
    """
    started = time.monotonic()
    say = reporter or Reporter()
    redis = await connect(redis_url, decode_responses=False, socket_timeout=30.0)
    history = await History.connect(database_url)
    try:
        async with redis_state.restore_lock(redis):
            sample = await history.shard_sample()
            keyspace = await shards.resolve(redis, configured_shards, sample)
            earlier = await redis_state.marker(redis)
            if earlier is not None:
                say.say(f"resuming a restore that did not finish (started {earlier})")
            elif await redis_state.holds_state(redis, keyspace) and not replace:
                raise RestoreError(
                    "Redis holds segments or users already; `segments restore --replace`"
                    " replaces them with what history says"
                )
            now = clock() if clock is not None else await redis_state.server_time_ms(redis)
            await redis_state.set_marker(redis, now)
            faults.reached("after_marker")

            say.step("reading the streams' unarchived entries")
            await redis_state.prepare_streams(redis, keyspace, await history.archived())
            snapshot = await history.stage_streams(redis, keyspace.history_streams())
            say.step("emptying Redis's state (streams kept)")
            await redis_state.wipe(redis, keyspace)
            faults.reached("after_wipe")

            await history.begin()
            catalogue = Catalogue.from_events(await history.lifecycle())
            await _write_catalogue(redis, keyspace, catalogue)
            total = await history.count_memberships()
            say.step("replaying membership events", total)
            report = await _restore_users(redis, keyspace, history, catalogue, now, say)
            await history.end()
            await _mark_rollouts(redis, catalogue)
            await redis_state.clear_marker(redis)
    finally:
        await history.close()
        await redis.aclose()
    return msgspec.structs.replace(
        report,
        segments=len(catalogue.live()),
        deleted_segments=len(catalogue.deleted()),
        stream_entries=snapshot.entries,
        skipped_entries=snapshot.skipped,
        history_events=total,
        resumed=earlier is not None,
        seconds=time.monotonic() - started,
    )


async def _restore_users(
    redis: Any,
    keyspace: Keyspace,
    history: History,
    catalogue: Catalogue,
    now: int,
    say: Reporter,
) -> RestoreReport:
    r = RestoreReport(
        shards=keyspace.shards, segments=0, deleted_segments=0, users=0, memberships=0,
        by_percent=0, removed_by_hand=0, ttl_removals=0, deletion_removals=0,
        stream_entries=0, skipped_entries=0, history_events=0, anomalies=0, orphans=0,
        resumed=False, seconds=0.0,
    )  # fmt: skip
    # Users come by id, so from every shard in turn: a writer and counts per shard.
    writers = [ShardWriter(redis, k) for k in keyspace.shard_keys]
    counts: list[dict[int, int]] = [defaultdict(int) for _ in keyspace.shard_keys]
    sending = InFlight()
    async for batch in history.users():
        events = 0
        for user in batch:
            uid = user.user_id
            events += len(user.events)
            shard = keyspace.shard_of(uid)
            writer = writers[shard]
            replayed = replay_user(uid, user.events, catalogue)
            settled = settle(uid, replayed, now)
            r.anomalies += replayed.anomalies
            r.orphans += settled.orphans
            for removal in settled.removals:
                writer.removal(uid, removal.slug, removal.ts, removal.reason)
                if removal.reason == "ttl":
                    r.ttl_removals += 1
                else:
                    r.deletion_removals += 1
            if replayed.known or settled.fields:
                writer.user(uid, settled.fields)
                r.users += 1
                shard_counts = counts[shard]
                for segment_id, state in settled.fields.items():
                    if is_member(state):
                        shard_counts[segment_id] += 1
                        r.memberships += 1
                        r.by_percent += state == BY_PERCENT
                    else:
                        r.removed_by_hand += state == REMOVED_BY_HAND
            if writer.full:
                call = writer.take()
                assert call is not None
                await sending.send(call)
                faults.reached("after_flush")
        say.advance(events)
    for writer in writers:
        call = writer.take()
        if call is not None:
            await sending.send(call)
            faults.reached("after_flush")
    await sending.drain()
    for k in keyspace.shard_keys:
        await redis_state.write_counts(redis, k, counts[k.shard])
    return r


# -- the command --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segments restore",
        description="Rebuild Redis (segments, known users, memberships with deadlines, percent"
        " markers) from the history in PostgreSQL and the streams. Stop the API first.",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace what Redis holds (without it, a Redis that holds state is refused)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        redis_url, database_url, configured = settings.read()
        faults.arm_from_environment()
    except ConfigError as exc:
        print(f"segments restore: configuration error: {exc}", file=sys.stderr)
        return 2
    with Reporter() as reporter:
        try:
            report = asyncio.run(
                restore(
                    redis_url,
                    database_url,
                    replace=args.replace,
                    configured_shards=configured,
                    reporter=reporter,
                )
            )
        except RestoreError as exc:
            reporter.say(f"segments restore: {exc}")
            return EXIT_REFUSED
        except ConfigError as exc:
            reporter.say(f"segments restore: {exc}")
            return 2
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
