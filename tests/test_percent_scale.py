"""A percent rollout over 200,000 known users while lookups keep coming.

The rollout walks each shard's users in bounded steps (``ROLLOUT_SCAN_COUNT``
per script call), so Redis serves lookups between the steps: a lookup waits
at most for the calls Redis has in hand, never for the whole rollout. This
used to be checked with a client-side clock (no lookup over 100 ms), which
on a shared 2-core machine measures the scheduler as much as Redis. Now the
test reads Redis's own record, the slow log of a private Redis set to log
every command, and checks the structure that bounds the wait, which no
machine load can change: the rollout ran as bounded calls, and lookups ran
between them. The calls' durations come from the same log and are printed;
their bound is a target of ``segments bench --scenarios percent`` (longest
script call creating a 10% segment), which measures, never a test
(figures at 1,000,000 users: docs/percent.md).
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from segments_core.redis_client import connect
from segments_dev.embedded import EmbeddedRedis
from service.bucket import in_cohort
from service.store import ROLLOUT_SCAN_COUNT, Store
from tests.support import KEYSPACE
from tests.support.cluster import client as cluster_client

pytestmark = pytest.mark.scale

N_USERS = 200_000
PERCENT_X100 = 1_000
MAX_LOG = 1_000_000
"""Slow log length: room for every command of the test."""


def _probe(
    url: str, sha: str, source: str, now_ms: int, known: int, started: Any, stop: Any, out: Any
) -> None:
    """Calls the lookup script in a loop on its own connection, in its own process,
    so lookups really interleave with the rollout's calls in Redis."""
    looked_up: list[int] = []
    rng = random.Random(11)
    fresh = known
    client = cluster_client(url, decode_responses=True)
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
            client.evalsha(sha, len(args), *args, uid, now_ms)
            looked_up.append(uid)
        out.put((looked_up, None))
    except Exception as exc:
        out.put(([], repr(exc)))
        started.set()
    finally:
        client.close()


@pytest.fixture
async def private_store(private_redis: EmbeddedRedis, clock: Any) -> AsyncIterator[Any]:
    """The domain layer on a Redis of this test's own (its slow log is read)."""
    redis = await connect(private_redis.url)
    try:
        yield Store(redis, clock=clock)
    finally:
        await redis.aclose()


def script_calls(url: str, shas: dict[str, str]) -> list[tuple[str, int]]:
    """(script name, duration in µs) of each call of ``shas`` in the slow log,
    in the order Redis ran them."""
    names = {sha.encode(): name for name, sha in shas.items()}
    client = cluster_client(url)
    try:
        entries = client.slowlog_get(MAX_LOG)
    finally:
        client.close()
    calls = []
    for entry in sorted(entries, key=lambda e: e["id"]):
        words = entry["command"].split()
        if words[:1] == [b"EVALSHA"] and words[1] in names:
            calls.append((names[words[1]], entry["duration"]))
    return calls


async def test_10_percent_over_200k_users_with_lookups_running(
    private_store: Any, private_redis: EmbeddedRedis, clock: Any
) -> None:
    store, url = private_store, private_redis.url
    slug = "SCALE_10"
    users = list(range(1, N_USERS + 1))
    for start in range(0, N_USERS, 10_000):
        assert await store.register_users(users[start : start + 10_000]) == 10_000

    script = store.scripts["getMemberships"]
    ctx = multiprocessing.get_context("spawn")
    started, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    probe = ctx.Process(
        target=_probe,
        args=(url, script.sha, script.source, clock(), N_USERS, started, stop, out),
        daemon=True,
    )
    probe.start()
    await store.redis.config_set("slowlog-log-slower-than", 0)  # every command
    await store.redis.config_set("slowlog-max-len", MAX_LOG)
    await store.redis.slowlog_reset()
    try:
        assert started.wait(30), "the lookup probe did not start"
        segment = await store.create_segment(slug, "", PERCENT_X100)
    finally:
        stop.set()
    looked_up, error = out.get(timeout=30)
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
    client = cluster_client(url, decode_responses=True)
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

    # Redis's record of the creation: the rollout's calls and the lookups, in order.
    shas = {name: store.scripts[name].sha for name in ("rolloutSegment", "getMemberships")}
    calls = script_calls(url, shas)
    assert len(calls) < MAX_LOG, "the slow log overflowed: the record is incomplete"
    steps = [i for i, (name, _) in enumerate(calls) if name == "rolloutSegment"]
    # Bounded steps: one call per ROLLOUT_SCAN_COUNT users of a shard at most.
    assert len(steps) >= N_USERS // ROLLOUT_SCAN_COUNT, f"{len(steps)} rollout calls"
    # Lookups ran while the rollout was under way, between its calls.
    between = [name for name, _ in calls[steps[0] : steps[-1]] if name == "getMemberships"]
    assert between, "no lookup ran between the rollout's first and last call"
    durations = sorted(us for name, us in calls if name == "rolloutSegment")
    print(
        f"\ncreated {slug} over {len(known)} users; {len(steps)} rollout calls, "
        f"median {durations[len(durations) // 2] / 1000:.1f} ms, longest "
        f"{durations[-1] / 1000:.1f} ms; {len(between)} lookups between them"
    )
