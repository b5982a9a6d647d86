"""Percent rollouts through the HTTP API (SPEC §3 "Percent segments", §4).

Every expectation is computed with ``service.bucket`` (the published
function), and every entry and exit is checked in the shard history streams
(``{sNN}:events``, fields u, s, o, t, r; docs/design.md): exactly one row per
state change, reason ``percent`` for what the percentage did.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import random
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis

from segments_core.keys import GLOBAL
from service.bucket import bucket_steps, in_cohort
from tests.support import SHARD_KEYS
from tests.support.cluster import client as cluster_client

API = "/api/v1"

_rng = random.Random(2024)
# 2,000 users: small ids and ids spread over the whole 63-bit range.
USERS: list[int] = list(range(1, 801)) + sorted({_rng.getrandbits(63) or 1 for _ in range(1200)})
assert len(USERS) == 2000
# Users nobody has registered: never seen by the service before the test names them.
NEVER_SEEN: list[int] = [10**12 + i for i in range(1, 1201)]


def cohort(slug: str, percent: float, users: Iterable[int]) -> set[int]:
    return {u for u in users if in_cohort(slug, u, round(percent * 100))}


def between(slug: str, lo: float, hi: float, users: Iterable[int]) -> set[int]:
    """Users with lo <= bucket < hi."""
    return {u for u in users if round(lo * 100) <= bucket_steps(slug, u) < round(hi * 100)}


# --- helpers over the API and the streams -----------------------------------


@pytest.fixture
def rdb(clean_redis_url: str) -> Iterator[redis.Redis]:
    client = cluster_client(clean_redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def register(client: Any, user_ids: list[int]) -> int:
    created = 0
    for start in range(0, len(user_ids), 10_000):
        r = client.post(f"{API}/users", json={"user_ids": user_ids[start : start + 10_000]})
        assert r.status_code == 200, r.text
        created += r.json()["created"]
    return created


def create(client: Any, slug: str, percent: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"slug": slug}
    if percent is not None:
        body["percent"] = percent
    r = client.post(f"{API}/segments", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def set_percent(client: Any, slug: str, percent: float | None) -> dict[str, Any]:
    r = client.patch(f"{API}/segments/{slug}", json={"percent": percent})
    assert r.status_code == 200, r.text
    assert r.json()["percent"] == percent
    return r.json()  # type: ignore[no-any-return]


def segment(client: Any, slug: str) -> dict[str, Any]:
    r = client.get(f"{API}/segments/{slug}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def lookup(client: Any, user_ids: list[int]) -> dict[int, list[str]]:
    """Batch lookup (POST /users/lookup), 1,000 ids a call."""
    out: dict[int, list[str]] = {}
    for start in range(0, len(user_ids), 1000):
        chunk = user_ids[start : start + 1000]
        r = client.post(f"{API}/users/lookup", json={"user_ids": chunk})
        assert r.status_code == 200, r.text
        users = r.json()["users"]
        assert [u["user_id"] for u in users] == chunk
        out.update({u["user_id"]: u["segments"] for u in users})
    return out


def holders(client: Any, slug: str, user_ids: list[int]) -> set[int]:
    return {u for u, segs in lookup(client, user_ids).items() if slug in segs}


def change(
    client: Any, user_id: int, add: Iterable[Any] = (), remove: Iterable[str] = ()
) -> list[str]:
    r = client.post(
        f"{API}/users/{user_id}/segments", json={"add": list(add), "remove": list(remove)}
    )
    assert r.status_code == 200, r.text
    return r.json()["segments"]  # type: ignore[no-any-return]


class History:
    """Reads the shard streams; ``since()`` gives the rows added after a mark."""

    def __init__(self, rdb: redis.Redis) -> None:
        self.rdb = rdb
        self.seen: dict[str, str] = {k.events: "-" for k in SHARD_KEYS}

    def all(self, slug: str) -> list[tuple[int, str, str, int]]:
        rows = []
        for k in SHARD_KEYS:
            for _id, f in self.rdb.xrange(k.events, "-", "+"):
                if f["s"] == slug:
                    rows.append((int(f["u"]), f["o"], f["r"], int(f["t"])))
        return rows

    def since(self, slug: str) -> list[tuple[int, str, str, int]]:
        """Rows of ``slug`` appended since the previous call (u, o, r, t)."""
        rows = []
        for k in SHARD_KEYS:
            start = self.seen[k.events]
            entries = self.rdb.xrange(k.events, start if start == "-" else f"({start}", "+")
            for entry_id, f in entries:
                self.seen[k.events] = entry_id
                if f["s"] == slug:
                    rows.append((int(f["u"]), f["o"], f["r"], int(f["t"])))
        return rows


def users_with(rows: list[tuple[int, str, str, int]], op: str, reason: str) -> set[int]:
    """The users of rows (op, reason), asserting each appears at most once."""
    picked = [u for u, o, r, _t in rows if o == op and r == reason]
    dupes = [u for u, n in Counter(picked).items() if n > 1]
    assert dupes == [], f"{op}/{reason} recorded more than once for {dupes[:5]}"
    return set(picked)


def known_users(rdb: redis.Redis) -> int:
    return sum(rdb.scard(k.users) for k in SHARD_KEYS)


def stream_lengths(rdb: redis.Redis) -> list[int]:
    return [rdb.xlen(GLOBAL.events), *(rdb.xlen(k.events) for k in SHARD_KEYS)]


# --- creation over known users ---------------------------------------------


def test_creation_adds_exactly_the_cohort_of_known_users(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    assert register(client, USERS) == len(USERS)
    body = create(client, "PCT_30", 30)
    expected = cohort("PCT_30", 30, USERS)

    assert body["percent"] == 30
    assert body["members"] == len(expected)
    n, p = len(USERS), 0.30
    assert abs(len(expected) - n * p) <= 5 * math.sqrt(n * p * (1 - p))
    assert segment(client, "PCT_30")["members"] == len(expected)
    assert holders(client, "PCT_30", USERS) == expected

    rows = history.since("PCT_30")
    assert users_with(rows, "add", "percent") == expected
    assert len(rows) == len(expected)  # nothing else: no removes, no manual rows
    # Lookups of known users register nobody and write nothing.
    assert holders(client, "PCT_30", USERS) == expected
    assert history.since("PCT_30") == []
    assert segment(client, "PCT_30")["members"] == len(expected)


def test_registering_later_joins_the_cohort_once(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    create(client, "LATE", 40)
    first, second = USERS[:1000], USERS[1000:]
    assert register(client, first) == 1000
    assert register(client, USERS) == 1000  # `created` counts only the new ids
    assert register(client, second[:10]) == 0
    expected = cohort("LATE", 40, USERS)
    assert holders(client, "LATE", USERS) == expected
    assert segment(client, "LATE")["members"] == len(expected)
    rows = history.since("LATE")
    assert users_with(rows, "add", "percent") == expected
    assert len(rows) == len(expected)


# --- never-seen users ---------------------------------------------------------


def test_never_seen_users_get_the_segment_iff_in_cohort(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    create(client, "NEW_25", 25)
    single, batch = NEVER_SEEN[:200], NEVER_SEEN[200:]
    expected_single = cohort("NEW_25", 25, single)
    expected_batch = cohort("NEW_25", 25, batch)
    assert 0 < len(expected_single) < len(single)

    for uid in single:
        r = client.get(f"{API}/users/{uid}/segments")
        assert r.status_code == 200
        assert r.json() == {
            "user_id": uid,
            "segments": ["NEW_25"] if uid in expected_single else [],
        }
    assert holders(client, "NEW_25", batch) == expected_batch

    # Sticky: the same answer on every later lookup, single or batch, and
    # after other segments come and go.
    create(client, "OTHER", 50)
    for _ in range(3):
        assert holders(client, "NEW_25", NEVER_SEEN) == expected_single | expected_batch
        for uid in single[:50]:
            segs = client.get(f"{API}/users/{uid}/segments").json()["segments"]
            assert ("NEW_25" in segs) == (uid in expected_single)
    client.delete(f"{API}/segments/OTHER")
    assert holders(client, "NEW_25", NEVER_SEEN) == expected_single | expected_batch

    everyone = expected_single | expected_batch
    assert segment(client, "NEW_25")["members"] == len(everyone)
    rows = history.since("NEW_25")
    assert users_with(rows, "add", "percent") == everyone
    assert len(rows) == len(everyone)
    # Each user named by a lookup became known (and joins later rollouts).
    assert known_users(rdb) == len(NEVER_SEEN)


def test_never_seen_user_named_by_a_change_joins_the_cohort(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    create(client, "HALF", 50)
    create(client, "PLAIN")
    users = NEVER_SEEN[:40]
    expected = cohort("HALF", 50, users)
    assert 0 < len(expected) < len(users)
    for uid in users:
        segs = change(client, uid, add=["PLAIN"])
        assert segs == (["HALF", "PLAIN"] if uid in expected else ["PLAIN"])
    rows = history.since("HALF")
    assert users_with(rows, "add", "percent") == expected
    assert len(rows) == len(expected)

    # A never-seen cohort user whose first change removes the segment: the
    # percent add and the manual remove are both recorded, and they stay out.
    uid = next(u for u in NEVER_SEEN[100:] if in_cohort("HALF", u, 5000))
    assert change(client, uid, remove=["HALF"]) == []
    rows = history.since("HALF")
    assert [(u, o, r) for u, o, r, _t in rows] == [
        (uid, "add", "percent"),
        (uid, "remove", "manual"),
    ]
    set_percent(client, "HALF", 100)
    assert lookup(client, [uid])[uid] == []


# --- re-created slug ------------------------------------------------------------


def test_deleted_then_recreated_slug_picks_the_same_cohort(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    register(client, USERS)
    create(client, "AGAIN", 20)
    before = holders(client, "AGAIN", USERS + NEVER_SEEN[:500])
    assert before == cohort("AGAIN", 20, USERS + NEVER_SEEN[:500])

    assert client.delete(f"{API}/segments/AGAIN").status_code == 204
    assert holders(client, "AGAIN", USERS + NEVER_SEEN[:500]) == set()
    rows = history.since("AGAIN")
    assert users_with(rows, "add", "percent") == before
    assert users_with(rows, "remove", "segment_deleted") == before
    assert len(rows) == 2 * len(before)

    body = create(client, "AGAIN", 20)
    assert body["members"] == len(before)
    assert holders(client, "AGAIN", USERS + NEVER_SEEN[:500]) == before
    rows = history.since("AGAIN")
    assert users_with(rows, "add", "percent") == before
    assert len(rows) == len(before)


def test_hand_removal_does_not_outlive_the_segment(client: Any, rdb: redis.Redis) -> None:
    """The "stay out" marker belongs to the deleted segment, not to the slug."""
    register(client, USERS)
    create(client, "GONE", 30)
    uid = next(u for u in USERS if in_cohort("GONE", u, 3000))
    change(client, uid, remove=["GONE"])
    client.delete(f"{API}/segments/GONE")
    create(client, "GONE", 30)
    assert lookup(client, [uid])[uid] == ["GONE"]


# --- ramps -------------------------------------------------------------------------


def test_ramp_up_down_and_null_keep_hand_added_members(client: Any, rdb: redis.Redis) -> None:
    slug = "RAMP"
    history = History(rdb)
    register(client, USERS)
    create(client, slug, 10)
    assert users_with(history.since(slug), "add", "percent") == cohort(slug, 10, USERS)

    # Added by hand: users far outside every cohort below, and members of the
    # 10% cohort (a percent member added by hand becomes a manual member:
    # no new row, since nothing changes for them right now).
    manual_out = set(sorted(between(slug, 60, 100, USERS))[:15])
    manual_in = set(sorted(between(slug, 0, 3, USERS))[:10])
    assert len(manual_out) == 15
    assert len(manual_in) == 10
    for uid in manual_out | manual_in:
        assert slug in change(client, uid, add=[slug])
    rows = history.since(slug)
    assert users_with(rows, "add", "manual") == manual_out
    assert len(rows) == len(manual_out)
    manual = manual_out | manual_in

    seen: set[int] = set()  # users of NEVER_SEEN named by a lookup so far

    def check(percent: float) -> None:
        expected = cohort(slug, percent, USERS) | manual
        assert holders(client, slug, USERS) == expected
        # Users never seen before follow the new percent...
        fresh = NEVER_SEEN[: 1 + int(percent * 3)]
        assert holders(client, slug, fresh) == cohort(slug, percent, fresh)
        seen.update(fresh)
        # ... and so do the ones the earlier lookups made known.
        assert segment(client, slug)["members"] == len(expected | cohort(slug, percent, seen))

    # Up: the newly covered join, every earlier member stays.
    set_percent(client, slug, 30)
    check(30)
    rows = history.since(slug)
    assert users_with(rows, "add", "percent") == between(slug, 10, 30, USERS) | cohort(
        slug, 30, NEVER_SEEN[:91]
    )
    assert [r for r in rows if r[1] == "remove"] == []

    # Down: only the users the percentage added who fall outside leave.
    set_percent(client, slug, 5.5)
    check(5.5)
    rows = history.since(slug)
    fresh_seen = NEVER_SEEN[:91]  # named by the lookups of check(30)
    left = between(slug, 5.5, 30, USERS + fresh_seen) - manual
    assert users_with(rows, "remove", "percent") == left
    assert users_with(rows, "add", "percent") == set()  # check(5.5) named only seen users

    # Null: every user the percentage added leaves; the hand-added stay.
    set_percent(client, slug, None)
    assert holders(client, slug, USERS) == manual
    assert segment(client, slug)["members"] == len(manual)
    assert holders(client, slug, NEVER_SEEN[-100:]) == set()  # no cohort any more
    seen.update(NEVER_SEEN[-100:])
    rows = history.since(slug)
    assert users_with(rows, "remove", "percent") == cohort(slug, 5.5, USERS + fresh_seen) - manual
    assert len(rows) == len(cohort(slug, 5.5, USERS + fresh_seen) - manual)

    # Up again from null: the cohort is back (the same users: sticky).
    set_percent(client, slug, 20)
    check(20)
    looked_up = NEVER_SEEN[:91] + NEVER_SEEN[-100:]
    rows = history.since(slug)
    assert users_with(rows, "add", "percent") == cohort(slug, 20, USERS + looked_up) - manual


def test_ramp_to_100_covers_everyone_and_back(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    register(client, USERS)
    create(client, "ALL", 0.01)
    assert holders(client, "ALL", USERS) == cohort("ALL", 0.01, USERS)
    set_percent(client, "ALL", 100)
    assert holders(client, "ALL", USERS) == set(USERS)
    assert holders(client, "ALL", NEVER_SEEN[:300]) == set(NEVER_SEEN[:300])
    set_percent(client, "ALL", 0.01)
    everyone = USERS + NEVER_SEEN[:300]
    assert holders(client, "ALL", everyone) == cohort("ALL", 0.01, everyone)
    rows = history.all("ALL")
    assert users_with(rows, "add", "percent") == set(everyone)
    assert users_with(rows, "remove", "percent") == set(everyone) - cohort("ALL", 0.01, everyone)


def test_percent_on_a_plain_segment_and_off_again(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    register(client, USERS)
    create(client, "LATER")
    hand = USERS[:5]
    for uid in hand:
        change(client, uid, add=["LATER"])
    history.since("LATER")
    set_percent(client, "LATER", 15)
    expected = cohort("LATER", 15, USERS) | set(hand)
    assert holders(client, "LATER", USERS) == expected
    assert users_with(history.since("LATER"), "add", "percent") == cohort("LATER", 15, USERS) - set(
        hand
    )
    set_percent(client, "LATER", None)
    assert holders(client, "LATER", USERS) == set(hand)


# --- removed by hand ---------------------------------------------------------


def test_user_removed_by_hand_stays_out_through_every_ramp(client: Any, rdb: redis.Redis) -> None:
    slug = "OUT"
    history = History(rdb)
    register(client, USERS)
    create(client, slug, 20)
    # In the cohort at every percent used below (bucket < 3).
    victims = set(sorted(between(slug, 0, 3, USERS))[:6])
    assert len(victims) == 6
    for uid in victims:
        assert change(client, uid, remove=[slug]) == []
    # A remove of a segment the user does not have changes nothing: such a
    # user was never "removed", and joins when a ramp covers them.
    bystanders = set(sorted(between(slug, 20, 50, USERS))[:4])
    for uid in bystanders:
        assert change(client, uid, remove=[slug]) == []

    others = set(USERS) - victims
    for percent in (50, 3, None, 100, 10):
        set_percent(client, slug, percent)
        got = holders(client, slug, USERS)
        assert got & victims == set(), percent
        assert got == (cohort(slug, percent, others) if percent else set())
        if percent == 50:
            assert bystanders <= got
    assert segment(client, slug)["members"] == len(cohort(slug, 10, others))

    rows = [r for r in history.all(slug) if r[0] in victims]
    assert sorted((u, o, r) for u, o, r, _t in rows) == sorted(
        [(u, "add", "percent") for u in victims] + [(u, "remove", "manual") for u in victims]
    )
    # The bystanders came and went with the ramps: in at 50%, out at 3%, in
    # at 100%, out at 10%.
    for uid in bystanders:
        rows = [(o, r) for u, o, r, _t in history.all(slug) if u == uid]
        assert rows == [("add", "percent"), ("remove", "percent")] * 2

    # Added by hand again: a manual member, kept when the rollout ends.
    uid = min(victims)
    assert change(client, uid, add=[slug]) == [slug]
    set_percent(client, slug, None)
    assert holders(client, slug, USERS) == {uid}


def test_hand_removal_without_a_percent_leaves_no_mark(client: Any, rdb: redis.Redis) -> None:
    """Only a removal from a segment that has a percent keeps the user out."""
    register(client, USERS)
    create(client, "NOMARK")
    uid = next(u for u in USERS if in_cohort("NOMARK", u, 5000))
    change(client, uid, add=["NOMARK"])
    assert change(client, uid, remove=["NOMARK"]) == []
    set_percent(client, "NOMARK", 50)
    assert lookup(client, [uid])[uid] == ["NOMARK"]


def test_deleted_user_is_new_again(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    create(client, "FORGET", 100)
    uid = NEVER_SEEN[0]
    assert change(client, uid, remove=["FORGET"]) == []  # marked: stays out
    assert client.delete(f"{API}/users/{uid}").status_code == 204
    assert lookup(client, [uid])[uid] == ["FORGET"]  # forgotten, mark included
    assert [(o, r) for _u, o, r, _t in history.since("FORGET")] == [
        ("add", "percent"),
        ("remove", "manual"),
        ("add", "percent"),
    ]


# --- history: reason, time, exactly once ---------------------------------------


def test_history_rows_for_each_entry_and_exit(
    clocked_client: Any, clock: Any, rdb: redis.Redis
) -> None:
    client, slug = clocked_client, "HIST"
    register(client, USERS)
    steps: list[tuple[int, float | None]] = []
    for percent in (10, 30, 10, None):
        clock.advance(60_000)
        if not steps:
            create(client, slug, percent)
        else:
            set_percent(client, slug, percent)
        steps.append((clock(), percent))
    (t1, _), (t2, _), (t3, _), (t4, _) = steps

    per_user: dict[int, list[tuple[str, str, int]]] = {}
    for u, o, r, t in History(rdb).all(slug):
        per_user.setdefault(u, []).append((o, r, t))
    for uid in USERS:
        b = bucket_steps(slug, uid)
        if b < 1000:
            expected = [("add", "percent", t1), ("remove", "percent", t4)]
        elif b < 3000:
            expected = [("add", "percent", t2), ("remove", "percent", t3)]
        else:
            expected = []
        assert per_user.get(uid, []) == expected, (uid, b)

    # A never-seen user joins at the moment of their first lookup.
    set_percent(client, slug, 100)
    clock.advance(5_000)
    uid = NEVER_SEEN[0]
    assert lookup(client, [uid])[uid] == [slug]
    assert [(o, r, t) for u, o, r, t in History(rdb).all(slug) if u == uid] == [
        ("add", "percent", clock())
    ]


def test_lifecycle_stream_records_the_percent(client: Any, rdb: redis.Redis) -> None:
    create(client, "LIFE", 12.5)
    set_percent(client, "LIFE", 0.01)
    set_percent(client, "LIFE", None)
    rows = [f for _id, f in rdb.xrange(GLOBAL.events) if f["s"] == "LIFE"]
    assert [(f["o"], f["p"]) for f in rows] == [
        ("created", "12.5"),
        ("changed", "0.01"),
        ("changed", ""),
    ]


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 100.001, 10.123, "ten", True, [10], {"p": 10}])
def test_bad_percent_is_rejected_and_changes_nothing(
    client: Any, rdb: redis.Redis, bad: Any
) -> None:
    register(client, USERS[:500])
    before = create(client, "BAD", 10)
    lengths = stream_lengths(rdb)
    members = holders(client, "BAD", USERS[:500])

    r = client.patch(f"{API}/segments/BAD", json={"percent": bad})
    assert r.status_code == 400, r.text
    assert "detail" in r.json()
    r = client.post(f"{API}/segments", json={"slug": "BAD_NEW", "percent": bad})
    assert r.status_code == 400, r.text
    assert client.get(f"{API}/segments/BAD_NEW").status_code == 404

    assert segment(client, "BAD") == before
    assert holders(client, "BAD", USERS[:500]) == members
    assert stream_lengths(rdb) == lengths


@pytest.mark.parametrize("bad", [1e-9, 1e-8, 0.001, 0.0001])
def test_percent_below_one_hundredth_is_rejected(client: Any, rdb: redis.Redis, bad: float) -> None:
    """0 < p but p has more than two decimals: a bad percent, not "no rollout"."""
    register(client, USERS[:500])
    before = create(client, "TINY", 10)
    lengths = stream_lengths(rdb)
    r = client.patch(f"{API}/segments/TINY", json={"percent": bad})
    assert r.status_code == 400, f"percent {bad} accepted: {r.text}"
    assert segment(client, "TINY") == before
    assert stream_lengths(rdb) == lengths
    r = client.post(f"{API}/segments", json={"slug": "TINY_NEW", "percent": bad})
    assert r.status_code == 400, f"percent {bad} accepted: {r.text}"


@pytest.mark.parametrize("bad", ["10", "10.5"])
def test_percent_given_as_a_string_is_rejected(client: Any, bad: str) -> None:
    """SPEC §4: a wrong type is a 400 (a JSON string is not a number)."""
    before = create(client, "STR", 10)
    r = client.patch(f"{API}/segments/STR", json={"percent": bad})
    assert r.status_code == 400, f"percent {bad!r} accepted: {r.text}"
    assert segment(client, "STR") == before


@pytest.mark.parametrize("good", [0.01, 0.1, 99.99, 100, 33.33, 12.3])
def test_valid_percents_are_accepted(client: Any, good: float) -> None:
    body = create(client, "OK", good)
    assert body["percent"] == good
    assert set_percent(client, "OK", good)["percent"] == good


def test_patch_without_percent_leaves_the_rollout(client: Any, rdb: redis.Redis) -> None:
    register(client, USERS)
    create(client, "KEEP", 30)
    lengths = stream_lengths(rdb)
    r = client.patch(f"{API}/segments/KEEP", json={"description": "now with words"})
    assert r.status_code == 200
    assert r.json()["percent"] == 30
    assert holders(client, "KEEP", USERS) == cohort("KEEP", 30, USERS)
    # Only the lifecycle row of the description change.
    assert stream_lengths(rdb)[1:] == lengths[1:]


# --- POST /api/v1/users ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"user_ids": []},
        {"user_ids": list(range(1, 10_002))},
        {"user_ids": [1, 2, 0]},
        {"user_ids": [1, -5]},
        {"user_ids": [2**63]},
        {"user_ids": [1, 1.5]},
        {"user_ids": [1, None]},
        {"user_ids": [1, "abc"]},
        {"user_ids": 5},
        {},
        {"user_ids": [1], "extra": True},
    ],
    ids=lambda b: str(b)[:30],
)
def test_register_users_rejects_bad_bodies(client: Any, rdb: redis.Redis, body: Any) -> None:
    create(client, "EVERYONE", 100)
    lengths = stream_lengths(rdb)
    r = client.post(f"{API}/users", json=body)
    assert r.status_code == 400, r.text
    assert known_users(rdb) == 0
    assert stream_lengths(rdb) == lengths
    assert segment(client, "EVERYONE")["members"] == 0


def test_register_users_rejects_an_id_given_as_a_string(client: Any, rdb: redis.Redis) -> None:
    """SPEC §4: a wrong type is a 400; "1" is not a user id."""
    r = client.post(f"{API}/users", json={"user_ids": [1, "2"]})
    assert r.status_code == 400, r.text
    assert known_users(rdb) == 0


def test_register_users_counts_only_new_ids(client: Any, rdb: redis.Redis) -> None:
    history = History(rdb)
    create(client, "EVERYONE", 100)
    ids = list(range(1, 10_001))
    r = client.post(f"{API}/users", json={"user_ids": ids})
    assert r.status_code == 200
    assert r.json() == {"created": 10_000}
    r = client.post(f"{API}/users", json={"user_ids": [*range(9_995, 10_005), 10_004, 2**63 - 1]})
    assert r.json() == {"created": 5}  # 10,001 .. 10,004 and 2^63-1; repeats count once
    r = client.post(f"{API}/users", json={"user_ids": [1, 2, 3]})
    assert r.json() == {"created": 0}
    # Users who became known by a lookup are not new either.
    lookup(client, [20_000])
    r = client.post(f"{API}/users", json={"user_ids": [20_000, 20_001]})
    assert r.json() == {"created": 1}

    total = 10_000 + 5 + 2
    assert known_users(rdb) == total
    assert segment(client, "EVERYONE")["members"] == total
    rows = history.since("EVERYONE")
    assert len(users_with(rows, "add", "percent")) == total
    assert len(rows) == total


# --- deadlines set by hand on a percent segment --------------------------------


@pytest.mark.parametrize("first", ["member", "removed_by_hand"])
def test_a_ramp_adds_only_newly_covered_users_after_a_deadline(
    clocked_client: Any, clock: Any, rdb: redis.Redis, first: str
) -> None:
    """SPEC §3: raising p "adds the newly covered users". A cohort user whose
    hand-set deadline passed is not newly covered by a ramp from 50 to 60
    (bucket < 40): that ramp must not change their membership, whichever
    state the expiry left them in."""
    client, slug = clocked_client, "DEADLINE"
    register(client, USERS)
    create(client, slug, 50)
    uid = next(u for u in USERS if bucket_steps(slug, u) < 4000)
    if first == "removed_by_hand":
        change(client, uid, remove=[slug])
    change(client, uid, add=[{"slug": slug, "ttl_seconds": 60}])
    clock.advance(61_000)
    segment(client, slug)  # counts sweep first: the expiry is applied now
    after_expiry = lookup(client, [uid])[uid]
    rows_before = History(rdb).all(slug)

    set_percent(client, slug, 60)
    assert lookup(client, [uid])[uid] == after_expiry
    assert [r for r in History(rdb).all(slug) if r[0] == uid] == [
        r for r in rows_before if r[0] == uid
    ]


# --- crashes (Store level: a process dying half way) ----------------------------


class Crash(Exception):
    pass


async def _cohort_members(store: Any, slug: str, users: list[int]) -> set[int]:
    results = await store.lookup(users)
    return {u for u, ms in zip(users, results, strict=True) if any(m.slug == slug for m in ms)}


async def test_repair_finishes_a_rollout_that_died_half_way(store: Any, monkeypatch: Any) -> None:
    from service import store as store_module

    await store.register_users(USERS)
    real = store_module.Store._rollout_shard

    async def dies_in_shard_5(self: Any, k: Any, segment_id: int) -> tuple[int, int]:
        if k.shard == 5:
            raise Crash
        return await real(self, k, segment_id)

    monkeypatch.setattr(store_module.Store, "_rollout_shard", dies_in_shard_5)
    with pytest.raises(Crash):
        await store.create_segment("HALFWAY", "", 3000)
    monkeypatch.undo()
    await store.repair()  # what the janitor of any API process does
    assert await _cohort_members(store, "HALFWAY", USERS) == cohort("HALFWAY", 30, USERS)


@pytest.mark.parametrize("dies_in", ["_register_everywhere", "_rollout"])
async def test_repair_finishes_a_creation_that_died_before_its_rollout(
    store: Any, monkeypatch: Any, dies_in: str
) -> None:
    """The segment is in the catalogue (so it exists, with its percent) but the
    process died before marking the rollout in ``{g}:rollouts``: the known
    users of the cohort must still become members once repair has run."""
    from service import store as store_module

    await store.register_users(USERS)

    async def dies(*_args: Any, **_kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(store_module.Store, dies_in, dies)
    with pytest.raises(Crash):
        await store.create_segment("DIED", "", 3000)
    monkeypatch.undo()
    assert (await store.get_segment("DIED")).percent_x100 == 3000
    await store.repair()
    assert await _cohort_members(store, "DIED", USERS) == cohort("DIED", 30, USERS)


async def test_repair_finishes_a_ramp_that_died_before_its_rollout(
    store: Any, monkeypatch: Any
) -> None:
    from service import store as store_module

    await store.register_users(USERS)
    await store.create_segment("RAMPDIED", "", 1000)

    async def dies(*_args: Any, **_kwargs: Any) -> Any:
        raise Crash

    monkeypatch.setattr(store_module.Store, "_rollout", dies)
    with pytest.raises(Crash):
        await store.update_segment("RAMPDIED", percent_x100=4000)
    monkeypatch.undo()
    await store.repair()
    assert await _cohort_members(store, "RAMPDIED", USERS) == cohort("RAMPDIED", 40, USERS)


# --- overlapping ramps -----------------------------------------------------------


RAMPERS = 3
ROUNDS = 6


def _ramper(url: str, slug: str, percents: list[int], barrier: Any, failures: Any) -> None:
    """One process of its own ramping ``slug``: one percent per round, all the
    rampers' calls of a round started together (``barrier``)."""
    from segments_core.redis_client import connect
    from service.store import Store

    async def main() -> None:
        redis = await connect(url)
        try:
            store = Store(redis)
            for percent in percents:
                barrier.wait()  # the round starts
                await store.update_segment(slug, percent_x100=percent)
                barrier.wait()  # the round is over
        finally:
            await redis.aclose()

    try:
        asyncio.run(main())
    except BaseException as exc:
        failures.put(repr(exc))
        barrier.abort()


async def test_overlapping_ramps_converge_on_the_last_percent(
    store: Any, clean_redis_url: str
) -> None:
    """Processes ramping the same segment at once (three of them, each its own
    OS process, connection and event loop): the state ends as the catalogue's
    final percent says (each rollout step reads it afresh)."""
    await store.register_users(USERS)
    await store.create_segment("RACE", "", 2000)
    rng = random.Random(3)
    rounds = [rng.sample([0, 500, 1000, 3000, 5000, 9000, 10_000], RAMPERS) for _ in range(ROUNDS)]
    ctx = multiprocessing.get_context("spawn")
    barrier, failures = ctx.Barrier(RAMPERS + 1, timeout=120), ctx.Queue()
    rampers = [
        ctx.Process(
            target=_ramper,
            args=(clean_redis_url, "RACE", [r[i] for r in rounds], barrier, failures),
        )
        for i in range(RAMPERS)
    ]
    for process in rampers:
        process.start()
    try:
        for _ in rounds:
            await asyncio.to_thread(barrier.wait)  # start the round
            await asyncio.to_thread(barrier.wait)  # every ramper is done
            final = await store.get_segment("RACE")
            expected = {u for u in USERS if in_cohort("RACE", u, final.percent_x100)}
            assert await _cohort_members(store, "RACE", USERS) == expected
            assert final.members == len(expected)
    except threading.BrokenBarrierError:
        pytest.fail(f"a ramper failed: {failures.get(timeout=5) if not failures.empty() else '?'}")
    finally:
        for process in rampers:
            process.join(30)
            if process.is_alive():
                process.kill()
    assert [p.exitcode for p in rampers] == [0] * RAMPERS
