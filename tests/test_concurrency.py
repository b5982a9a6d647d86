"""Concurrency (SPEC §6): state and history stay consistent under racing writes.

- Many concurrent changes of a few users (asyncio tasks on one client, and
  threads with their own clients and event loops), with a sweeper running,
  a segment deleted mid-way and then created again with the same slug, and
  a user deleted mid-way. Afterwards every user's stream events, replayed
  in order, give exactly the user's current segments, with no add of a
  held segment and no remove of one not held; no user hash keeps a field of
  a deleted segment; member counts match.
- A segment with 20,000 members is deleted in many bounded purge steps
  while lookups keep being answered; afterwards nothing returns it and
  every member left it exactly once in history.
- Requests that land inside a deletion (between its first step and the
  shard clean-up) leave a history that reads right in time order, and reads
  never list one slug twice.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections import Counter, defaultdict
from typing import Any

import pytest
from model import Event, replay

from segments_core.keys import GLOBAL
from segments_core.redis_client import connect
from service import store as store_module
from service.errors import SegmentNotFound, UnknownSegments
from service.store import AddItem, Store
from tests.support import SHARD_KEYS, for_user, shard_of

SLUGS = ["A", "B", "C", "D"]
USERS = [1, 2, 7, 17, 42]
"""Users the random changes touch (7 and 17 share a shard)."""
BYSTANDERS = [99, 100]
"""Users only the coordinator touches: they hold C, with and without a
deadline, when it is deleted, whatever the racing changes do."""
CHECKED = USERS + BYSTANDERS
assert shard_of(7) == shard_of(17)


def _event(fields: dict[str, str]) -> Event:
    return (
        int(fields["u"]),
        fields["s"],
        fields["o"],
        int(fields["t"]),
        fields["r"],
        int(fields["d"]) if "d" in fields else None,
    )


async def all_events(redis: Any) -> dict[int, list[tuple[str, Event]]]:
    """Every shard stream's entries per user, in stream order, with entry ids."""
    out: dict[int, list[tuple[str, Event]]] = defaultdict(list)
    for k in SHARD_KEYS:
        last = "-"
        while True:
            chunk = await redis.xrange(k.events, min=last, count=10_000)
            if last != "-":
                chunk = chunk[1:]
            if not chunk:
                break
            for entry_id, fields in chunk:
                ev = _event(fields)
                assert shard_of(ev[0]) == k.shard
                out[ev[0]].append((entry_id, ev))
            last = chunk[-1][0]
    return out


async def check_consistency(store: Store, users: list[int]) -> None:
    """After the dust settles: history replays to state, nothing dead remains."""
    redis = store.redis
    await store.sweep()
    live_segments = {s.slug: s for s in await store.list_segments()}
    live_ids = {str(s.id) for s in live_segments.values()}

    history = await all_events(redis)
    current = dict(zip(users, await store.lookup(users), strict=True))
    counts: Counter[str] = Counter()
    for uid in users:
        state, problems = replay([ev for _, ev in history.get(uid, [])])
        assert problems == [], f"user {uid}: {problems}"
        held = sorted(m.slug for m in current[uid])
        assert sorted(state) == held, f"user {uid}: history says {sorted(state)}, state {held}"
        assert len(set(held)) == len(held)
        counts.update(held)
        # Deadlines: the last add's deadline, unless a later add of the held
        # segment changed it (which writes no event); a live deadline never
        # lies in the past.
        for m in current[uid]:
            assert m.deadline_ms == 0 or m.deadline_ms > store.clock()
    for slug, segment in live_segments.items():
        assert segment.members == counts[slug], slug

    # The raw keys: no field of a deleted (dead or dying) segment in any user
    # hash, nothing dying, no deletion pending, counters only of live ids.
    dead: set[str] = set()
    for k in SHARD_KEYS:
        assert await redis.hlen(k.seg_dying) == 0, k.tag
        dead |= set(await redis.smembers(k.seg_dead))
        assert set(await redis.hkeys(k.counts)) <= live_ids
        assert set(await redis.hgetall(k.seg_slug)) == live_ids
    assert await redis.hlen(GLOBAL.deleting) == 0
    assert not dead & live_ids
    for uid in users:
        fields = await redis.hgetall(for_user(uid).user(uid))
        assert set(fields) <= live_ids, f"user {uid} keeps {set(fields) - live_ids}"
        assert not set(fields) & dead


async def check_deletion_had_members(store: Store) -> None:
    """The run exercised what it is about: C's deletion removed members,
    the sweeper or changes expired some, and changes were refused."""
    reasons = Counter(
        ev[4] for entries in (await all_events(store.redis)).values() for _, ev in entries
    )
    assert reasons["segment_deleted"] >= len(BYSTANDERS), reasons
    assert reasons["ttl"] >= 1, reasons
    assert reasons["user_deleted"] >= 1, reasons


class Workload:
    """Random changes of a few users; a coordinator deletes and recreates C
    and deletes a user once a share of the changes is done."""

    def __init__(self, seed: int, n_changes: int) -> None:
        rng = random.Random(seed)
        self.plan = []
        for _ in range(n_changes):
            uid = rng.choice(USERS)
            chosen = rng.sample(SLUGS, rng.randint(1, 3))
            adds, removes = [], []
            for slug in chosen:
                kind = rng.random()
                if kind < 0.35:
                    removes.append(slug)
                else:
                    adds.append((slug, rng.choice([0, 0, 100, 300, 1000])))
            self.plan.append((uid, adds, removes, rng.choice([0, 0, 1, 25])))
        self.done = 0
        self.refused = 0
        self.applied = 0
        self.lock = threading.Lock()
        self.third = threading.Event()
        self.two_thirds = threading.Event()

    def progress(self) -> None:
        with self.lock:
            self.done += 1
            if self.done >= len(self.plan) // 3:
                self.third.set()
            if self.done >= 2 * len(self.plan) // 3:
                self.two_thirds.set()

    async def run_change(self, store: Store, index: int) -> None:
        uid, adds, removes, tick = self.plan[index]
        store.clock.advance(tick)  # type: ignore[attr-defined]
        now = store.clock()
        try:
            await store.change_user_segments(
                uid, [AddItem(s, now + d if d else 0) for s, d in adds], removes
            )
        except UnknownSegments as exc:
            # Only C can be unknown: between its deletion and its re-creation.
            assert exc.slugs == ["C"]
            with self.lock:
                self.refused += 1
        else:
            with self.lock:
                self.applied += 1
        self.progress()


async def coordinator(store: Store, work: Workload) -> None:
    await asyncio.to_thread(work.third.wait)
    # Make sure the deletion has members to purge (racing changes may still
    # remove some of them first).
    now = store.clock()
    await asyncio.gather(
        *(store.change_user_segments(u, [AddItem("C", 0)], []) for u in USERS),
        store.change_user_segments(99, [AddItem("C", 0), AddItem("A", 0)], []),
        store.change_user_segments(100, [AddItem("C", now + 10**6)], []),
    )
    await store.delete_segment("C")
    await store.create_segment("C", "again", 0)
    await asyncio.to_thread(work.two_thirds.wait)
    await store.delete_user(2)


async def sweeper(store: Store, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await store.sweep()
        await asyncio.sleep(0)


async def _setup(store: Store) -> None:
    for slug in SLUGS:
        await store.create_segment(slug, "", 0)


async def test_concurrent_changes_with_a_segment_deleted_and_recreated(
    store: Store, clock: Any
) -> None:
    await _setup(store)
    work = Workload(seed=20240501, n_changes=900)
    limit = asyncio.Semaphore(48)  # below the client's connection pool

    async def one(i: int) -> None:
        async with limit:
            await work.run_change(store, i)

    async def lookups(stop: asyncio.Event) -> None:
        while not stop.is_set():
            for got in await store.lookup(USERS):
                assert len({m.slug for m in got}) == len(got)
            await asyncio.sleep(0)

    stop = asyncio.Event()
    background = [asyncio.create_task(sweeper(store, stop)), asyncio.create_task(lookups(stop))]
    await asyncio.gather(coordinator(store, work), *(one(i) for i in range(len(work.plan))))
    stop.set()
    await asyncio.gather(*background)

    assert work.applied + work.refused == len(work.plan)
    assert work.applied > len(work.plan) // 2
    clock.advance(1)
    await check_consistency(store, CHECKED)
    await check_deletion_had_members(store)
    # The lifecycle: C created twice, deleted once.
    lifecycle = [(f["o"], f["s"]) for _, f in await store.redis.xrange(GLOBAL.events)]
    assert lifecycle.count(("created", "C")) == 2
    assert lifecycle.count(("deleted", "C")) == 1


async def test_concurrent_changes_from_threads_with_their_own_clients(
    clean_redis_url: str, store: Store, clock: Any
) -> None:
    await _setup(store)
    work = Workload(seed=7, n_changes=600)
    threads = 4

    def thread_main(t: int) -> None:
        async def main() -> None:
            redis = await connect(clean_redis_url, max_connections=16)
            own = Store(redis, clock=clock)  # the shared manual clock
            try:
                limit = asyncio.Semaphore(8)

                async def one(i: int) -> None:
                    async with limit:
                        await work.run_change(own, i)

                await asyncio.gather(*(one(i) for i in range(t, len(work.plan), threads)))
            finally:
                await redis.aclose()

        asyncio.run(main())

    stop = asyncio.Event()
    sweeping = asyncio.create_task(sweeper(store, stop))
    await asyncio.gather(
        coordinator(store, work), *(asyncio.to_thread(thread_main, t) for t in range(threads))
    )
    stop.set()
    await sweeping

    assert work.applied + work.refused == len(work.plan)
    clock.advance(1)
    await check_consistency(store, CHECKED)
    await check_deletion_had_members(store)


# --- a big deletion in bounded steps ---------------------------------------------


class CountingScript:
    """Delegates to the real script; counts calls and stamps them in a shared sequence."""

    def __init__(self, script: Any, sequence: itertools.count) -> None:
        self.script = script
        self.sequence = sequence
        self.stamps: list[int] = []

    async def __call__(self, redis: Any, keys: Any, args: Any) -> Any:
        self.stamps.append(next(self.sequence))
        return await self.script(redis, keys, args)


@pytest.mark.scale
async def test_big_segment_is_deleted_in_bounded_steps_while_lookups_go_on(
    store: Store, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 20_000
    monkeypatch.setattr(store_module, "PURGE_SCAN_COUNT", 100)
    await store.register_users(range(1, n + 1))
    big = await store.create_segment("BIG", "everyone", 10_000)  # 100%: every known user
    assert big.members == n
    await store.create_segment("OTHER", "", 0)
    # 50 members get a deadline that passes before the deletion (not swept),
    # so they leave BIG by `ttl` at their deadline, not by the deletion.
    t0 = clock()
    for uid in range(1, 51):
        await store.change_user_segments(uid, [AddItem("BIG", t0 + 1000), AddItem("OTHER", 0)], [])
    clock.advance(2000)
    deleted_at = clock()

    sequence = itertools.count()
    purge = CountingScript(store.scripts["purgeSegment"], sequence)
    store.scripts["purgeSegment"] = purge  # type: ignore[assignment]

    sample = list(range(1, n + 1, 97))
    seen_big: dict[int, list[bool]] = defaultdict(list)
    answered: list[int] = []
    done = asyncio.Event()

    async def lookup_loop() -> None:
        while not done.is_set():
            got = await store.lookup(sample)
            answered.append(next(sequence))
            for uid, memberships in zip(sample, got, strict=True):
                seen_big[uid].append("BIG" in {m.slug for m in memberships})
            await asyncio.sleep(0)

    async def delete() -> None:
        try:
            await store.delete_segment("BIG")
        finally:
            done.set()

    await asyncio.gather(lookup_loop(), delete())

    # Many bounded steps: 1,250 users per shard, 100 per step.
    assert len(purge.stamps) >= 16 * 10, len(purge.stamps)
    # Lookups were answered while the purge steps ran (between the first and the last).
    first, last = purge.stamps[0], purge.stamps[-1]
    assert sum(first < stamp < last for stamp in answered) >= 3
    # Once a lookup stops returning BIG for a user, it never returns it again.
    for uid, flags in seen_big.items():
        assert flags == sorted(flags, reverse=True), uid

    # After DELETE returned: no read returns it, the catalogue does not hold it.
    for start in range(1, n + 1, 1000):
        batch = list(range(start, min(start + 1000, n + 1)))
        for uid, memberships in zip(batch, await store.lookup(batch), strict=True):
            slugs = [m.slug for m in memberships]
            assert "BIG" not in slugs, uid
            assert slugs == (["OTHER"] if uid <= 50 else []), uid
    with pytest.raises(SegmentNotFound):
        await store.get_segment("BIG")
    assert [s.slug for s in await store.list_segments()] == ["OTHER"]
    again = await store.create_segment("BIG", "", 0)
    assert again.members == 0 and again.id != big.id
    assert await store.user_segments(1) == [store_module.Membership("OTHER", 0)]

    # Raw keys: no user keeps the old id; its counters are gone.
    old = str(big.id)
    pipe = store.redis.pipeline(transaction=False)
    for uid in range(1, n + 1):
        pipe.hexists(for_user(uid).user(uid), old)
    assert not any(await pipe.execute())
    for k in SHARD_KEYS:
        assert not await store.redis.hexists(k.counts, old)
        assert await store.redis.sismember(k.seg_dead, old)

    # History: every member left BIG exactly once, by the deletion at its
    # time, or (the 50) by ttl at their deadline.
    removals: dict[int, list[Event]] = defaultdict(list)
    for uid, entries in (await all_events(store.redis)).items():
        for _, ev in entries:
            if ev[1] == "BIG" and ev[2] == "remove":
                removals[uid].append(ev)
    assert len(removals) == n
    for uid in range(1, n + 1):
        (ev,) = removals[uid]
        if uid <= 50:
            assert ev[3:5] == (t0 + 1000, "ttl"), ev
        else:
            assert ev[3:5] == (deleted_at, "segment_deleted"), ev
    reasons = Counter(ev[4] for evs in removals.values() for ev in evs)
    assert reasons == {"segment_deleted": n - 50, "ttl": 50}


# --- requests landing inside a deletion ------------------------------------------


class BeforeFirstCall:
    """Delegates to the real script; runs ``hook`` once before the first call,
    and holds every call (in any shard) until the hook is done."""

    def __init__(self, script: Any, hook: Any) -> None:
        self.script = script
        self.hook = hook
        self.started = False
        self.finished = asyncio.Event()

    async def __call__(self, redis: Any, keys: Any, args: Any) -> Any:
        if not self.started:
            self.started = True
            try:
                await self.hook()
            finally:
                self.finished.set()
        await self.finished.wait()
        return await self.script(redis, keys, args)


def _time_ordered(events: list[tuple[str, Event]]) -> list[Event]:
    """A user's events as the CSV report orders them: by time, then stream order."""

    def key(item: tuple[str, Event]) -> tuple[int, int, int]:
        ms, seq = item[0].split("-")
        return item[1][3], int(ms), int(seq)

    return [ev for _, ev in sorted(events, key=key)]


async def test_change_landing_inside_a_deletion_is_not_recorded_after_it(
    store: Store, clock: Any
) -> None:
    """A change that runs after `deleteSegment` (catalogue) but before
    `retireSegment` reached the user's shard.

    The deletion took effect at T; the change, at T+10, still finds the
    segment in the shard and adds it. The purge then writes the removal
    stamped T: in time order (the CSV) the user leaves C before entering it,
    and the history says the user is still in C. Either the change must be
    refused (the segment is gone) or the removal must not predate the add.
    """
    await store.create_segment("C", "", 0)
    await store.change_user_segments(1, [AddItem("C", 0)], [])
    outcome: dict[str, Any] = {}

    async def concurrent_change() -> None:
        clock.advance(10)
        try:
            outcome["reply"] = await store.change_user_segments(7, [AddItem("C", 0)], [])
        except UnknownSegments:
            outcome["refused"] = True

    store.scripts["retireSegment"] = BeforeFirstCall(  # type: ignore[assignment]
        store.scripts["retireSegment"], concurrent_change
    )
    deleted_at = clock()
    await store.delete_segment("C")
    assert outcome  # the hook ran

    history = await all_events(store.redis)
    for uid in (1, 7):
        in_time_order = _time_ordered(history.get(uid, []))
        state, problems = replay(in_time_order)
        assert problems == [] and state == {}, (
            f"user {uid}, history in time order: {in_time_order}"
        )
    assert [ev[4] for _, ev in history[1]] == ["manual", "segment_deleted"]
    # Stamped when the segment left the user's shard: not before the deletion,
    # and not before any change that shard applied while it was still there.
    assert history[1][-1][1][3] >= deleted_at
    assert await store.user_segments(7) == []


async def test_slug_created_again_during_its_deletion_is_never_listed_twice(
    store: Store, clock: Any
) -> None:
    """DELETE of C, and before its shard clean-up a new C is created and added
    to a user who held the old one (another client, or the janitor's window
    after a crash). A read must not answer ["C", "C"]; the segment's member
    count and the reads must agree."""
    await store.create_segment("C", "", 0)
    await store.change_user_segments(1, [AddItem("C", 0)], [])
    seen: dict[str, Any] = {}

    async def recreate_and_add() -> None:
        clock.advance(10)
        await store.create_segment("C", "new", 0)
        changed = await store.change_user_segments(1, [AddItem("C", 0)], [])
        seen["change"] = [m.slug for m in changed]
        seen["read"] = [m.slug for m in await store.user_segments(1)]
        seen["members"] = (await store.get_segment("C")).members

    store.scripts["retireSegment"] = BeforeFirstCall(  # type: ignore[assignment]
        store.scripts["retireSegment"], recreate_and_add
    )
    await store.delete_segment("C")

    assert seen["change"] == ["C"], seen
    assert seen["read"] == ["C"], seen
    assert seen["members"] == 1
    # After the deletion finished: the user is in the new C, once.
    assert [m.slug for m in await store.user_segments(1)] == ["C"]
    assert (await store.get_segment("C")).members == 1
    # In time order the history ends with the user in C.
    state, problems = replay(_time_ordered((await all_events(store.redis))[1]))
    assert problems == [] and set(state) == {"C"}
