"""Restore from history and verify against it (issue 13), on real Redis and PostgreSQL.

A rich state is built through the HTTP API with the archiver running: hand
adds, deadlines (one passing while the service runs), percent cohorts with
ramps up and down, hand removals from a cohort, a deadline on a cohort
member, deletions, a slug deleted and created again, deleted users, users
named first by a lookup. Once everything is archived, Redis is emptied and
``segments restore`` rebuilds it: every lookup and segment object must be
what it was, and ``segments verify`` must find no difference.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

from segments_core.keys import GLOBAL, load_keyspace
from segments_core.redis_client import connect
from segments_core.retention import stream_bounds
from segments_core.streams import group_state, last_generated_ids
from segments_restore import redis_state
from segments_restore import verify as verify_module
from segments_restore.catalogue import Catalogue, LifecycleEvent
from segments_restore.history import History
from segments_restore.progress import Reporter
from segments_restore.redis_state import RestoreError
from segments_restore.replay import Event, replay_user, settle
from segments_restore.restore import EXIT_REFUSED, restore
from segments_restore.restore import main as restore_main
from segments_restore.shards import infer
from segments_restore.verify import verify
from service.app import create_app
from service.bucket import in_cohort
from service.settings import Settings
from service.store import AddItem, Store
from tests.conftest import ManualClock
from tests.support.cluster import flush
from tests.support.history import archiver_in_thread

ROOT = Path(__file__).resolve().parent.parent
USERS = list(range(1, 301))
"""Registered through POST /users."""
NAMED_BY_LOOKUP = list(range(301, 341))
"""Never registered: a lookup names them first (some fall in a cohort)."""
EVERYONE = USERS + NAMED_BY_LOOKUP


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


@contextmanager
def service(redis_url: str, db: str, clock: ManualClock) -> Iterator[TestClient[Any]]:
    """The API (time driven by ``clock``) and an archiver, on ``redis_url``."""
    settings = Settings(redis_url=redis_url, database_url=db, sweep_interval_s=0.2)
    app = create_app(settings, clock=clock)
    with archiver_in_thread(redis_url, db), TestClient(app) as client:
        yield client


def in_p(uid: int, pct: int) -> bool:
    return in_cohort("P", uid, pct)


def build_rich_state(c: TestClient[Any], clock: ManualClock) -> dict[str, Any]:
    """Every kind of change the service makes; returns facts the tests check."""

    def step() -> None:
        clock.advance(10)  # a distinct instant per call, as real calls have

    ok(c.post("/api/v1/users", json={"user_ids": USERS}))
    for body in (
        {"slug": "A", "description": "hand-made"},
        {"slug": "B"},
        {"slug": "P", "description": "rollout", "percent": 30},
        {"slug": "Q", "percent": 50},
        {"slug": "D", "description": "to be deleted"},
        {"slug": "R", "description": "first R"},
    ):
        step()
        ok(c.post("/api/v1/segments", json=body), 201)
    step()
    for uid in range(1, 41):
        ok(c.post(f"/api/v1/users/{uid}/segments", json={"add": ["A"]}))
    step()
    for uid in range(10, 31):
        ok(
            c.post(
                f"/api/v1/users/{uid}/segments", json={"add": [{"slug": "B", "ttl_seconds": 3600}]}
            )
        )
    far = "2099-01-01T00:00:00Z"
    ok(c.post("/api/v1/users/2/segments", json={"add": [{"slug": "B", "expires_at": far}]}))
    # A short deadline that passes while the service runs (the sweeper writes `ttl`).
    ok(c.post("/api/v1/users/100/segments", json={"add": [{"slug": "B", "ttl_seconds": 1}]}))
    step()
    ok(c.post("/api/v1/users/5/segments", json={"add": ["D"]}))
    ok(c.post("/api/v1/users/6/segments", json={"add": [{"slug": "D", "ttl_seconds": 100}]}))

    cohort = [u for u in USERS if in_p(u, 2000) and u not in (7, 8)]
    outside = [u for u in USERS if not in_p(u, 3000)]
    removed_by_hand = cohort[:3]
    timed_cohort_member = cohort[3]
    step()
    for uid in removed_by_hand:
        ok(c.post(f"/api/v1/users/{uid}/segments", json={"add": [], "remove": ["P"]}))
    # A deadline on a cohort member: when it passes, the marker "x" keeps the user out.
    ok(
        c.post(
            f"/api/v1/users/{timed_cohort_member}/segments",
            json={"add": [{"slug": "P", "ttl_seconds": 1}], "remove": []},
        )
    )
    ok(c.post(f"/api/v1/users/{outside[0]}/segments", json={"add": ["P"]}))
    step()
    ok(c.patch("/api/v1/segments/P", json={"percent": 60}))  # ramp up
    step()
    ok(c.patch("/api/v1/segments/P", json={"percent": 20}))  # ramp down
    step()
    ok(c.patch("/api/v1/segments/Q", json={"percent": None}))  # rollout ended
    step()
    ok(c.patch("/api/v1/segments/Q", json={"description": "no longer a rollout"}))
    step()
    ok(c.delete("/api/v1/segments/D"), 204)

    step()
    for uid in range(50, 61):
        ok(c.post(f"/api/v1/users/{uid}/segments", json={"add": ["R"]}))
    step()
    ok(c.delete("/api/v1/segments/R"), 204)
    step()
    ok(
        c.post("/api/v1/segments", json={"slug": "R", "description": "second R", "percent": 10}),
        201,
    )
    hand_r = [u for u in range(50, 80) if not in_cohort("R", u, 1000)][:4]
    step()
    for uid in hand_r:
        ok(c.post(f"/api/v1/users/{uid}/segments", json={"add": ["R"]}))
    step()
    for uid in (7, 8):
        ok(c.delete(f"/api/v1/users/{uid}"), 204)

    clock.advance(2_000)  # the 1 s deadlines pass while the service runs
    ok(c.get("/api/v1/segments"))  # counts sweep first: the `ttl` removals are written now
    for uid in EVERYONE:  # names the new users (their cohorts join) and deleted ones again
        ok(c.get(f"/api/v1/users/{uid}/segments"))
    return {
        "removed_by_hand": removed_by_hand,
        "timed_cohort_member": timed_cohort_member,
        "outside_member": outside[0],
    }


def api_view(c: TestClient[Any]) -> dict[str, Any]:
    """Everything a client can read: every lookup form and every segment object."""
    view: dict[str, Any] = {}
    for uid in EVERYONE:
        view[f"plain {uid}"] = ok(c.get(f"/api/v1/users/{uid}/segments"))
        view[f"expand {uid}"] = ok(c.get(f"/api/v1/users/{uid}/segments?expand=true"))
    view["batch"] = ok(c.post("/api/v1/users/lookup", json={"user_ids": EVERYONE}))
    segments = ok(c.get("/api/v1/segments"))
    view["segments"] = segments
    for s in segments["segments"]:
        view[f"segment {s['slug']}"] = ok(c.get(f"/api/v1/segments/{s['slug']}"))
    return view


async def _archived(redis_url: str) -> bool:
    redis = await connect(redis_url)
    try:
        keyspace = await load_keyspace(redis)
        streams = keyspace.history_streams()
        for stream, target in (await last_generated_ids(redis, streams)).items():
            if not (await group_state(redis, stream)).archived_through(target):
                return False
        return True
    finally:
        await redis.aclose()


def wait_archived(redis_url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not asyncio.run(_archived(redis_url)):
        assert time.monotonic() < deadline, "the archiver did not catch up"
        time.sleep(0.1)


async def _state_dump(redis_url: str) -> dict[str, Any]:
    """Every state key (streams, lock, marks aside) with its content."""
    redis = await connect(redis_url)
    try:
        keyspace = await load_keyspace(redis)
        dump: dict[str, Any] = {}
        keys = [GLOBAL.segments, GLOBAL.next_id, GLOBAL.deleting, GLOBAL.rollouts, GLOBAL.restore]
        for k in keyspace.shard_keys:
            users = await redis.smembers(k.users)
            keys += [k.users, k.seg_id, k.seg_slug, k.seg_dying, k.seg_dead, k.seg_rev]
            keys += [k.seg_pct, k.seg_hi, k.counts, k.due, *(k.user(int(u)) for u in users)]
        for key in keys:
            kind = await redis.type(key)
            if kind == "hash":
                dump[key] = await redis.hgetall(key)
            elif kind == "set":
                dump[key] = sorted(await redis.smembers(key))
            elif kind == "zset":
                dump[key] = await redis.zrange(key, 0, -1, withscores=True)
            elif kind == "string":
                dump[key] = await redis.get(key)
        return dump
    finally:
        await redis.aclose()


def state_dump(redis_url: str) -> dict[str, Any]:
    return asyncio.run(_state_dump(redis_url))


async def _stale_feed_cursors_resume(redis_url: str, db: str) -> list[str]:
    """Streams on which a change-feed cursor from before the loss would resume
    (it must reset: what the stream held is gone from Redis)."""
    with psycopg.connect(db) as conn:
        archived = conn.execute(
            "SELECT stream, last_entry_ms, last_entry_seq FROM archive_progress"
        ).fetchall()
    redis = await connect(redis_url)
    try:
        bounds = {b.stream: b for b in await stream_bounds(redis, [a[0] for a in archived])}
    finally:
        await redis.aclose()
    return [s for s, ms, _ in archived if bounds[s].resumable_from((ms - 1, 0))]


def set_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, db: str) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATABASE_URL", db)
    monkeypatch.delenv("SEGMENTS_SHARDS", raising=False)


# --- the whole round trip ---------------------------------------------------------------


def test_restore_gives_back_every_lookup_and_segment(
    clean_redis_url: str,
    db: str,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with service(clean_redis_url, db, clock) as c:
        facts = build_rich_state(c, clock)
        wait_archived(clean_redis_url)
        before = api_view(c)
        # What the service left, for the markers below.
        live_state = state_dump(clean_redis_url)

    flush(clean_redis_url)  # Redis is lost
    report = asyncio.run(restore(clean_redis_url, db, clock=clock))
    assert report.memberships > 0 and report.ttl_removals == 0
    assert report.anomalies == 0 and report.orphans == 0
    restored = state_dump(clean_redis_url)
    assert GLOBAL.restore not in restored

    # The hashes hold what the service had: "p", "x", deadlines, the same ids.
    users_of = {k: v for k, v in live_state.items() if ":u:" in k}
    assert {k: v for k, v in restored.items() if ":u:" in k} == users_of
    p_id = str(json.loads(restored[GLOBAL.segments]["P"])["id"])
    for uid in facts["removed_by_hand"]:
        assert any(v.get(p_id) == "x" for k, v in users_of.items() if k.endswith(f":u:{uid}"))

    with service(clean_redis_url, db, clock) as c:
        assert api_view(c) == before
        wait_archived(clean_redis_url)  # (a report's wait is met on the new streams too)

    set_env(monkeypatch, clean_redis_url, db)
    assert verify_module.main([]) == 0, capsys.readouterr().out
    assert "same:" in capsys.readouterr().out

    # Redis holds state now: refused without --replace, and the same again with it.
    assert restore_main([]) == EXIT_REFUSED
    assert "--replace" in capsys.readouterr().err
    assert restore_main(["--replace"]) == 0
    assert state_dump(clean_redis_url) == restored


def test_verify_reports_a_membership_changed_behind_the_services_back(
    clean_redis_url: str,
    db: str,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with service(clean_redis_url, db, clock) as c:
        build_rich_state(c, clock)
        wait_archived(clean_redis_url)
    set_env(monkeypatch, clean_redis_url, db)
    # The live state the service built is what history says, to the marker.
    assert verify_module.main([]) == 0, capsys.readouterr().out
    capsys.readouterr()

    async def tamper() -> None:
        redis = await connect(clean_redis_url)
        try:
            keyspace = await load_keyspace(redis)
            ids = {
                slug: json.loads(raw)["id"]
                for slug, raw in (await redis.hgetall(GLOBAL.segments)).items()
            }
            k = keyspace.for_user(1)
            await redis.hdel(k.user(1), str(ids["A"]))  # a membership lost
            k = keyspace.for_user(250)
            await redis.hset(k.user(250), str(ids["B"]), "0")  # one nobody made
            k = keyspace.for_user(11)
            await redis.hset(k.user(11), str(ids["B"]), "4102444800000")  # another deadline
            await redis.zadd(k.due, {f"11:{ids['B']}": 4102444800000})
            seg = json.loads(await redis.hget(GLOBAL.segments, "Q"))
            seg["description"] = "edited by hand"
            await redis.hset(GLOBAL.segments, "Q", json.dumps(seg))
        finally:
            await redis.aclose()

    asyncio.run(tamper())
    assert verify_module.main([]) == verify_module.EXIT_DIFFERENT
    out = capsys.readouterr().out
    assert "missing: user 1 segment A" in out
    assert "extra: user 250 segment B" in out
    assert "deadline: user 11 segment B" in out
    assert "segment: segment Q: description Redis 'edited by hand'" in out
    assert "DIFFERENT" in out


# --- deadlines that pass while Redis is gone ------------------------------------------


def test_a_membership_expired_while_redis_was_gone_gets_its_ttl_removal_once(
    clean_redis_url: str, db: str, clock: ManualClock
) -> None:
    with service(clean_redis_url, db, clock) as c:
        ok(c.post("/api/v1/segments", json={"slug": "TRIAL"}), 201)
        ok(c.post("/api/v1/segments", json={"slug": "COHORT", "percent": 50}), 201)
        cohort_user = next(u for u in range(1, 100) if in_cohort("COHORT", u, 5000))
        ok(c.post("/api/v1/users/1/segments", json={"add": [{"slug": "TRIAL", "ttl_seconds": 60}]}))
        ok(
            c.post(
                "/api/v1/users/2/segments", json={"add": [{"slug": "TRIAL", "ttl_seconds": 600}]}
            )
        )
        # A cohort member given a deadline: taken out by hand first, since
        # a deadline set on a membership the user holds writes no event
        # (SPEC §3) and so is not in history (README, "restore").
        ok(c.post(f"/api/v1/users/{cohort_user}/segments", json={"add": [], "remove": ["COHORT"]}))
        ok(
            c.post(
                f"/api/v1/users/{cohort_user}/segments",
                json={"add": [{"slug": "COHORT", "ttl_seconds": 60}]},
            )
        )
        deadline = clock() + 60_000
        wait_archived(clean_redis_url)
    flush(clean_redis_url)
    clock.advance(120_000)  # user 1's and the cohort user's deadlines pass while Redis is gone

    first = asyncio.run(restore(clean_redis_url, db, clock=clock))
    assert first.ttl_removals == 2
    # The streams hold the new removals only: a feed cursor from before the
    # loss must reset, not resume past what Redis lost.
    assert asyncio.run(_stale_feed_cursors_resume(clean_redis_url, db)) == []
    again = asyncio.run(restore(clean_redis_url, db, clock=clock, replace=True))
    assert again.ttl_removals == 0  # the first run's removals are history now

    with service(clean_redis_url, db, clock) as c:
        assert ok(c.get("/api/v1/users/1/segments"))["segments"] == []
        assert ok(c.get("/api/v1/users/2/segments"))["segments"] == ["TRIAL"]
        # Expiry left the marker: the cohort user stays out of the rollout.
        assert "COHORT" not in ok(c.get(f"/api/v1/users/{cohort_user}/segments"))["segments"]
        ok(c.patch("/api/v1/segments/COHORT", json={"percent": 100}))
        assert "COHORT" not in ok(c.get(f"/api/v1/users/{cohort_user}/segments"))["segments"]
        wait_archived(clean_redis_url)

    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT user_id, segment, (extract(epoch FROM ts) * 1000)::bigint FROM history"
            " WHERE reason = 'ttl' ORDER BY user_id"
        ).fetchall()
    assert sorted(rows) == sorted([(1, "TRIAL", deadline), (cohort_user, "COHORT", deadline)])


# --- a restore killed mid-way ------------------------------------------------------------


def _restore_process(redis_url: str, db: str, crash_at: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": db, "PYTHONPATH": str(ROOT)}
    env.pop("SEGMENTS_SHARDS", None)
    if crash_at:
        env["SEGMENTS_RESTORE_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "segments_restore.restore"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_a_restore_killed_mid_way_and_run_again_ends_in_the_same_state(
    clean_redis_url: str, db: str, clock: ManualClock
) -> None:
    # An hour ago by the service's clock: deadlines of a minute have passed by
    # the wall clock the restore process reads, so it writes `ttl` removals.
    clock.advance(-3_600_000)
    users = list(range(1, 3001))
    with service(clean_redis_url, db, clock) as c:
        for start in range(0, len(users), 1000):
            ok(c.post("/api/v1/users", json={"user_ids": users[start : start + 1000]}))
        ok(c.post("/api/v1/segments", json={"slug": "HALF", "percent": 50}), 201)
        ok(c.post("/api/v1/segments", json={"slug": "TRIAL"}), 201)
        for uid in range(1, 301):
            ttl = 60 if uid % 2 else 86_400 * 365
            ok(
                c.post(
                    f"/api/v1/users/{uid}/segments",
                    json={"add": [{"slug": "TRIAL", "ttl_seconds": ttl}]},
                )
            )
        wait_archived(clean_redis_url)
    flush(clean_redis_url)

    killed = _restore_process(clean_redis_url, db, "after_flush:3")
    output = killed.communicate(timeout=120)[0].decode()
    assert killed.returncode == -signal.SIGKILL, output
    half_done = state_dump(clean_redis_url)
    assert GLOBAL.restore in half_done  # the marker says: not finished

    rerun = _restore_process(clean_redis_url, db, None)  # no --replace: the marker allows it
    output = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, output
    after_rerun = state_dump(clean_redis_url)
    assert GLOBAL.restore not in after_rerun

    # An uninterrupted restore from the same history gives the very same state,
    # and writes no removal again.
    report = asyncio.run(restore(clean_redis_url, db, replace=True))
    assert report.ttl_removals == 0
    assert state_dump(clean_redis_url) == after_rerun

    with service(clean_redis_url, db, clock) as c:
        wait_archived(clean_redis_url)
    with psycopg.connect(db) as conn:
        ttl = conn.execute(
            "SELECT user_id, count(*) FROM history WHERE reason = 'ttl' GROUP BY user_id"
        ).fetchall()
    assert sorted(ttl) == [(uid, 1) for uid in range(1, 301, 2)]  # once each, whatever the runs


# --- the pure parts ------------------------------------------------------------------------


def _lifecycle(*events: tuple[int, str, str, int, int]) -> Catalogue:
    return Catalogue.from_events(
        LifecycleEvent(sid, slug, op, ts, ts, 0, pct, "d") for sid, slug, op, ts, pct in events
    )


def test_a_slug_created_again_is_a_new_incarnation() -> None:
    catalogue = _lifecycle(
        (1, "S", "created", 100, 0), (1, "S", "deleted", 200, 0), (2, "S", "created", 300, 2000)
    )
    events = [
        Event(42, "S", True, "manual", 150, 0, 150),
        Event(42, "S", False, "segment_deleted", 210, 0, 210),
        Event(42, "S", True, "manual", 310, 0, 310),
        Event(42, "S", False, "manual", 320, 0, 320),  # a percent segment: the marker stays
    ]
    replayed = replay_user(42, events, catalogue)
    assert replayed.by_segment_id() == {2: "x"}
    assert settle(42, replayed, 1_000).fields == {2: "x"}


def test_a_deletion_the_loss_cut_short_is_finished_in_history() -> None:
    catalogue = _lifecycle((1, "S", "created", 100, 0), (1, "S", "deleted", 500, 0))
    replayed = replay_user(
        7,
        [Event(7, "S", True, "manual", 150, 0, 150), Event(7, "S", True, "manual", 160, 0, 160)],
        catalogue,
    )
    assert replayed.anomalies == 1  # an add of a member is never written
    settled = settle(7, replayed, 1_000)
    assert settled.fields == {}
    assert [(r.reason, r.ts) for r in settled.removals] == [("segment_deleted", 500)]
    timed = replay_user(7, [Event(7, "S", True, "manual", 150, 400, 150)], catalogue)
    assert [(r.reason, r.ts) for r in settle(7, timed, 1_000).removals] == [("ttl", 400)]


def test_the_number_of_shards_is_read_back_from_the_streams_users_are_on() -> None:
    import zlib

    for shards in (1, 16, 64, 1024):
        sample = [
            (f"{{s{zlib.crc32(str(u).encode()) % shards:02d}}}:events", u) for u in range(1, 3000)
        ]
        assert infer(sample) == shards
    assert infer([]) is None


def test_restore_is_refused_while_another_one_holds_the_lock(
    clean_redis_url: str, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_state, "LOCK_WAIT_S", 0.5)

    async def attempt() -> None:
        redis = await connect(clean_redis_url)
        try:
            await redis.set(GLOBAL.restore_lock, "someone-else", px=60_000)
        finally:
            await redis.aclose()
        await restore(clean_redis_url, db)

    with pytest.raises(RestoreError, match="another restore"):
        asyncio.run(attempt())


def test_verify_sets_aside_a_user_changed_while_it_runs(
    clean_redis_url: str, db: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service(clean_redis_url, db, clock) as c:
        ok(c.post("/api/v1/segments", json={"slug": "A"}), 201)
        ok(c.post("/api/v1/users/1/segments", json={"add": ["A"]}))
        wait_archived(clean_redis_url)

    begin = History.begin

    async def begin_then_change(self: History) -> None:
        """The snapshot is taken; the service changes a user right after."""
        await begin(self)
        redis = await connect(clean_redis_url)
        try:
            store = Store(redis, clock=clock, keyspace=await load_keyspace(redis))
            await store.change_user_segments(2, [AddItem("A", 0)], [])
        finally:
            await redis.aclose()

    monkeypatch.setattr(History, "begin", begin_then_change)
    report = asyncio.run(verify(clean_redis_url, db))
    assert report.same, report.differences
    # User 2's new membership and the member count of A in its shard: set aside.
    assert report.changed_meanwhile == 2

    monkeypatch.setattr(History, "begin", begin)  # the next run sees it in history
    report = asyncio.run(verify(clean_redis_url, db))
    assert report.same and report.changed_meanwhile == 0


def test_progress_off_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    with Reporter(out) as reporter:  # a StringIO is no terminal: no bar
        reporter.step("replaying membership events", 1_000)
        reporter.advance(10)
        reporter.say("done")
    assert out.getvalue().splitlines() == ["replaying membership events (1,000) ...", "done"]
