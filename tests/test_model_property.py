"""Property test: random operation sequences against ``Store`` and ``tests/model.py``.

Each example is a list of operations (create / delete segment, register,
change, delete user, read, lookup, advance the clock, sweep, list
segments). They run against the real ``Store`` on a flushed Redis and
against the pure-Python model; after every step the test compares:

- the answer of the step (returned memberships, counts, errors);
- every user's live memberships (slug + deadline), through reads for known
  users and through the raw keys for unknown ones (a read would make them
  known);
- the history: the new entries of every shard stream, per user, against
  the model's events (blocks in order; inside one block any order), and
  the segment lifecycle entries of ``{g}:events``;
- the documented data model (docs/design.md): user hashes, ``due``
  entries, member counters, known-user sets, no dying segment left.

Every example starts on an empty database (FLUSHDB) at a fixed time, with
A, B and C created; "Z" is never created. A small alphabet of slugs and
users makes collisions (same user, same slug, same shard: users 7 and 17
share shard 2) common. Hypothesis tests are synchronous here: each example
runs its operations in one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from model import (
    Blocks,
    Event,
    Model,
    SegmentExistsError,
    SegmentNotFoundError,
    UnknownSegmentsError,
    matches_blocks,
)

from segments_core.keys import GLOBAL
from segments_core.redis_client import connect
from service.errors import SegmentExists, SegmentNotFound, UnknownSegments
from service.models import MAX_USER_ID
from service.store import AddItem, Store
from tests.support import SHARD_KEYS, for_user, shard_of

START_MS = 1_700_000_000_000
SLUGS = ["A", "B", "C"]
NEVER_CREATED = "Z"
USERS = [1, 2, 7, 17, MAX_USER_ID]
assert shard_of(7) == shard_of(17)  # two users of one shard

slugs = st.sampled_from(SLUGS)
change_slugs = st.sampled_from(SLUGS * 5 + [NEVER_CREATED])
users = st.sampled_from(USERS)
ttls = st.sampled_from([1, 500, 1000, 1500, 3000])
"""ms from now to an add's deadline."""

change_items = st.lists(
    st.tuples(
        change_slugs,
        st.one_of(st.just(("remove",)), st.just(("add", None)), ttls.map(lambda t: ("add", t))),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda item: item[0],
)

KINDS = (
    ["change"] * 8
    + ["advance"] * 4
    + ["create"] * 2
    + ["delete_segment"]
    + ["register", "delete_user", "sweep", "list_segments", "read", "lookup"]
)


@st.composite
def operations(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(KINDS))
    if kind in ("create", "delete_segment"):
        return (kind, draw(slugs))
    if kind == "register":
        return (kind, draw(st.lists(users, min_size=1, max_size=4)))
    if kind == "change":
        return (kind, draw(users), draw(change_items))
    if kind in ("delete_user", "read"):
        return (kind, draw(users))
    if kind == "advance":
        return (kind, draw(st.sampled_from([1, 499, 500, 1000, 2000, 5000])))
    if kind == "lookup":
        return (kind, draw(st.lists(users, min_size=1, max_size=3)))
    return (kind,)


def _event(fields: dict[str, str]) -> Event:
    assert {"u", "s", "o", "t", "r"} <= set(fields) <= {"u", "s", "o", "t", "r", "d"}, fields
    return (
        int(fields["u"]),
        fields["s"],
        fields["o"],
        int(fields["t"]),
        fields["r"],
        int(fields["d"]) if "d" in fields else None,
    )


class Runner:
    def __init__(self, store: Store, clock: Any, *, in_hypothesis: bool = False) -> None:
        self.in_hypothesis = in_hypothesis
        self.store = store
        self.redis = store.redis
        self.clock = clock
        self.model = Model()
        self.last_ids: dict[str, str] = {}
        self.deleted_ids: set[int] = set()

    # --- one operation -----------------------------------------------------------

    async def step(self, op: tuple[Any, ...]) -> None:
        now = self.clock()
        store, model = self.store, self.model
        blocks: Blocks = {}
        lifecycle: list[tuple[str, str, int, int]] = []
        kind = op[0]

        if kind == "create":
            slug = op[1]
            try:
                segment_id = model.create_segment(slug)
            except SegmentExistsError:
                with pytest.raises(SegmentExists):
                    await store.create_segment(slug, "", 0)
            else:
                # create_segment answers with get_segment, which sweeps first.
                _, blocks = model.sweep(now)
                segment = await store.create_segment(slug, "", 0)
                assert (segment.slug, segment.id, segment.members) == (slug, segment_id, 0)
                assert segment.percent_x100 == 0 and segment.created_at_ms == now
                lifecycle.append(("created", slug, now, segment_id))

        elif kind == "delete_segment":
            slug = op[1]
            segment_id = model.segments.get(slug)
            try:
                blocks = model.delete_segment(slug, now)
            except SegmentNotFoundError:
                with pytest.raises(SegmentNotFound):
                    await store.delete_segment(slug)
            else:
                assert segment_id is not None
                await store.delete_segment(slug)
                self.deleted_ids.add(segment_id)
                lifecycle.append(("deleted", slug, now, segment_id))

        elif kind == "register":
            uids = op[1]
            assert await store.register_users(uids) == model.register_users(uids)

        elif kind == "change":
            uid, items = op[1], op[2]
            adds = [(s, now + spec[1] if spec[1] else 0) for s, spec in items if spec[0] == "add"]
            removes = [s for s, spec in items if spec[0] == "remove"]
            try:
                expected, blocks = model.change(uid, adds, removes, now)
            except UnknownSegmentsError as exc:
                with pytest.raises(UnknownSegments) as info:
                    await store.change_user_segments(
                        uid, [AddItem(s, d) for s, d in adds], removes
                    )
                assert info.value.slugs == exc.slugs
            else:
                got = await store.change_user_segments(
                    uid, [AddItem(s, d) for s, d in adds], removes
                )
                assert [tuple(m) for m in got] == expected

        elif kind == "delete_user":
            removed, blocks = model.delete_user(op[1], now)
            assert await store.delete_user(op[1]) == removed

        elif kind == "advance":
            self.clock.advance(op[1])

        elif kind == "sweep":
            handled, blocks = model.sweep(now)
            assert await store.sweep() == handled

        elif kind == "list_segments":
            # Sweeps first (exact counts), then counts.
            _, blocks = model.sweep(now)
            listed = await store.list_segments()
            counts = model.counts()
            assert [(s.slug, s.id, s.members) for s in listed] == [
                (slug, model.segments[slug], counts[slug]) for slug in sorted(model.segments)
            ]
            for slug in SLUGS:
                if slug in model.segments:
                    assert (await store.get_segment(slug)).members == counts[slug]
                else:
                    with pytest.raises(SegmentNotFound):
                        await store.get_segment(slug)

        elif kind == "read":
            got = await store.user_segments(op[1])
            assert [tuple(m) for m in got] == model.read(op[1], now)

        elif kind == "lookup":
            got_many = await store.lookup(op[1])
            assert [[tuple(m) for m in got] for got in got_many] == [
                model.read(uid, now) for uid in op[1]
            ]

        else:  # pragma: no cover
            raise AssertionError(op)

        if self.in_hypothesis:  # coverage notes for --hypothesis-show-statistics
            for user_blocks in blocks.values():
                for block in user_blocks:
                    for e in block:
                        event(f"{kind}: {e[2]} {e[4]}")
        await self.check_history(blocks)
        await self.check_lifecycle(lifecycle)
        await self.check_state()

    # --- checks ------------------------------------------------------------------

    async def _new_entries(self, streams: list[str]) -> list[list[dict[str, str]]]:
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            last = self.last_ids.get(stream)
            pipe.xrange(stream, min=f"({last}" if last else "-")
        out = []
        for stream, entries in zip(streams, await pipe.execute(), strict=True):
            if entries:
                self.last_ids[stream] = entries[-1][0]
            out.append([fields for _, fields in entries])
        return out

    async def check_history(self, blocks: Blocks) -> None:
        actual: dict[int, list[Event]] = defaultdict(list)
        new = await self._new_entries([k.events for k in SHARD_KEYS])
        for k, entries in zip(SHARD_KEYS, new, strict=True):
            for fields in entries:
                ev = _event(fields)
                assert shard_of(ev[0]) == k.shard, f"{ev} written to {k.events}"
                actual[ev[0]].append(ev)
        for uid in sorted(set(actual) | set(blocks)):
            expected = blocks.get(uid, [])
            assert matches_blocks(actual.get(uid, []), expected), (
                f"user {uid}: history {actual.get(uid, [])} != expected {expected}"
            )

    async def check_lifecycle(self, expected: list[tuple[str, str, int, int]]) -> None:
        got = [
            (f["o"], f["s"], int(f["t"]), int(f["id"]))
            for f in (await self._new_entries([GLOBAL.events]))[0]
        ]
        assert got == expected

    async def check_state(self) -> None:
        now, model = self.clock(), self.model
        pipe = self.redis.pipeline(transaction=False)
        for uid in USERS:
            pipe.hgetall(for_user(uid).user(uid))
        for k in SHARD_KEYS:
            pipe.smembers(k.users)
            pipe.zrange(k.due, 0, -1, withscores=True)
            pipe.hgetall(k.counts)
            pipe.hlen(k.seg_dying)
            pipe.hgetall(k.seg_id)
            pipe.smembers(k.seg_dead)
        pipe.hlen(GLOBAL.deleting)
        replies = await pipe.execute()

        # User hashes: segment id -> deadline ("0" for none), expired ones included.
        hashes = dict(zip(USERS, replies[: len(USERS)], strict=True))
        for uid in USERS:
            expected = {
                str(model.segments[slug]): str(deadline)
                for slug, deadline in model.held.get(uid, {}).items()
            }
            assert hashes[uid] == expected, f"user hash of {uid}"

        rest = replies[len(USERS) :]
        live_ids = {slug: str(i) for slug, i in model.segments.items()}
        for k in SHARD_KEYS:
            known, due, counts, dying, seg_ids, dead = rest[6 * k.shard : 6 * k.shard + 6]
            shard_users = {u for u in USERS if shard_of(u) == k.shard}
            assert {int(u) for u in known} == model.known & shard_users, f"users of {k.tag}"
            expected_due = {
                f"{uid}:{model.segments[slug]}": float(deadline)
                for uid in shard_users
                for slug, deadline in model.held.get(uid, {}).items()
                if deadline
            }
            assert dict(due) == expected_due, f"due of {k.tag}"
            expected_counts: dict[str, int] = defaultdict(int)
            for uid in shard_users:
                for slug in model.held.get(uid, {}):
                    expected_counts[str(model.segments[slug])] += 1
            assert {i: int(n) for i, n in counts.items() if int(n)} == dict(expected_counts)
            assert dying == 0, f"a dying segment left in {k.tag}"
            assert seg_ids == live_ids, f"catalogue of {k.tag}"
            assert {int(i) for i in dead} == self.deleted_ids
        assert rest[-1] == 0, "a deletion left pending in {g}:deleting"

        # Reads of known users, after the raw checks: a read of a user Redis
        # does not know would register the user and hide the difference.
        known = sorted(model.known)
        if known:
            got_many = await self.store.lookup(known)
            for uid, got in zip(known, got_many, strict=True):
                assert [tuple(m) for m in got] == model.live(uid, now), f"user {uid}"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operations(), min_size=15, max_size=40))
def test_store_behaves_like_the_model(redis_url: str, clock: Any, ops: list[tuple]) -> None:
    async def run() -> None:
        redis = await connect(redis_url)
        try:
            await redis.flushdb()
            clock.now_ms = START_MS
            runner = Runner(Store(redis, clock=clock), clock, in_hypothesis=True)
            for op in [("create", slug) for slug in SLUGS] + ops:
                await runner.step(op)
        finally:
            await redis.aclose()

    asyncio.run(run())


async def test_scenario_expiry_order_and_deletions(store: Store, clock: Any) -> None:
    """A fixed walk through the rules the random test relies on, step by step."""
    runner = Runner(store, clock)
    for op in [
        ("create", "A"),
        ("create", "B"),
        ("create", "C"),
        ("change", 7, [("A", ("add", 1000)), ("B", ("add", 500)), ("C", ("add", None))]),
        ("change", 17, [("A", ("add", None)), ("C", ("add", 3000))]),
        ("advance", 500),  # B of user 7 is due exactly now
        ("read", 7),  # not returned, not swept
        ("change", 7, [("C", ("add", 2000))]),  # ttl B first; C gets a deadline, no event
        ("change", 7, [("A", ("remove",)), ("Z", ("add", None))]),  # unknown: nothing happens
        ("advance", 2000),  # A of 7 past (1000), C of 7 past (2500)
        ("delete_segment", "C"),  # 7: ttl at 2500; 17: segment_deleted (deadline 3000)
        ("delete_user", 7),  # ttl A at 1000
        ("change", 17, [("A", ("add", 1))]),  # held, now with a deadline
        ("advance", 1),
        ("sweep",),
        ("list_segments",),
        ("create", "C"),  # the slug again: a new id, empty
        ("change", 17, [("C", ("add", None)), ("B", ("add", 500))]),
        ("change", 17, [("C", ("remove",)), ("A", ("remove",))]),  # A expired: only C
        ("change", 17, [("C", ("add", None))]),
        ("delete_user", 17),
        ("delete_user", 17),  # idempotent
        ("register", [1, 2, 1]),
        ("register", [2, 7]),
        ("lookup", [1, MAX_USER_ID]),
    ]:
        await runner.step(op)
    # The walk reached the interesting states: every kind of event was met.
    events = []
    for k in SHARD_KEYS:
        events += [_event(f) for _, f in await store.redis.xrange(k.events)]
    reasons = {(e[2], e[4]) for e in events}
    assert reasons == {
        ("add", "manual"),
        ("remove", "manual"),
        ("remove", "ttl"),
        ("remove", "segment_deleted"),
        ("remove", "user_deleted"),
    }
