"""A percent rollout over 200,000 known users while lookups keep coming.

The rollout walks each shard's users in bounded steps (``ROLLOUT_SCAN_COUNT``
per script call), so Redis serves lookups between the steps. The issue asks
this test to check that no lookup waited more than 100 ms during the
creation. A lookup waits for the script calls Redis has in hand when it
arrives (one per shard walked at the same time), so that bound is loose
only while few shards are walked at once: docs/percent.md has the figures,
and ``scripts/measure_percent.py`` measures them at 1,000,000 users.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import pytest
import redis

from service.bucket import in_cohort
from tests.support import KEYSPACE

pytestmark = pytest.mark.scale

N_USERS = 200_000
PERCENT_X100 = 1_000
MAX_LOOKUP_S = 0.100
"""The issue's bound on any single lookup during the creation."""


def _probe(
    url: str, sha: str, source: str, now_ms: int, known: int, started: Any, stop: Any, out: Any
) -> None:
    """Calls the lookup script in a loop on its own connection, in its own process
    (a thread of the test process would measure the GIL, not Redis)."""
    latencies: list[float] = []
    looked_up: list[int] = []
    rng = random.Random(11)
    fresh = known
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        client.script_load(source)
        started.set()
        while not stop.is_set():
            # Three lookups in four of known users, one of a user never seen.
            if rng.random() < 0.75:
                uid = rng.randint(1, known)
            else:
                fresh += 1
                uid = fresh
            k = KEYSPACE.for_user(uid)
            args = [k.user(uid), k.users, k.seg_slug, k.seg_pct, k.counts, k.events]
            t0 = time.perf_counter()
            client.evalsha(sha, len(args), *args, uid, now_ms)
            latencies.append(time.perf_counter() - t0)
            looked_up.append(uid)
        out.put((latencies, looked_up, None))
    except Exception as exc:
        out.put(([], [], repr(exc)))
        started.set()
    finally:
        client.close()


async def test_10_percent_over_200k_users_with_lookups_running(
    store: Any, clean_redis_url: str, clock: Any
) -> None:
    slug = "SCALE_10"
    users = list(range(1, N_USERS + 1))
    for start in range(0, N_USERS, 10_000):
        assert await store.register_users(users[start : start + 10_000]) == 10_000

    script = store.scripts["getMemberships"]
    ctx = multiprocessing.get_context("spawn")
    started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    probe = ctx.Process(
        target=_probe,
        args=(clean_redis_url, script.sha, script.source, clock(), N_USERS, started, stop, out),
        daemon=True,
    )
    probe.start()
    try:
        assert started.wait(30), "the lookup probe did not start"
        t0 = time.perf_counter()
        segment = await store.create_segment(slug, "", PERCENT_X100)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
    latencies, looked_up, error = out.get(timeout=30)
    probe.join(10)
    assert error is None, error

    # Exact cohort: the registered users and every user the probe made known.
    known = set(users) | set(looked_up)
    expected = {u for u in known if in_cohort(slug, u, PERCENT_X100)}
    assert (await store.get_segment(slug)).members == len(expected)
    # The probe may have named a few new cohort users after the creation
    # returned its count, and before it was told to stop.
    assert len(expected) - 50 <= segment.members <= len(expected)
    assert abs(len(expected) - 0.1 * len(known)) < 5 * (len(known) * 0.09) ** 0.5

    # History: one `percent` add per member, nothing else.
    client = redis.Redis.from_url(clean_redis_url, decode_responses=True)
    try:
        rows = [
            (int(f["u"]), f["o"], f["r"])
            for k in KEYSPACE.shard_keys
            for _id, f in client.xrange(k.events)
            if f["s"] == slug
        ]
    finally:
        client.close()
    assert len(rows) == len(expected)
    assert {u for u, o, r in rows if (o, r) == ("add", "percent")} == expected

    # Every probed user answers by the cohort now (sticky from here on).
    probed = sorted(set(looked_up))[:20_000]
    answers = await store.lookup(probed)
    assert {u for u, ms in zip(probed, answers, strict=True) if ms} == expected & set(probed)

    latencies = sorted(latencies)
    worst = latencies[-1]
    print(
        f"\ncreated {slug} over {len(known)} users in {elapsed:.2f} s; "
        f"{len(latencies)} lookups meanwhile, p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.2f}"
        f" ms, max {worst * 1e3:.2f} ms"
    )
    assert len(latencies) >= 10, "the probe hardly ran during the creation"
    assert worst < MAX_LOOKUP_S, f"a lookup waited {worst * 1e3:.1f} ms during the creation"
