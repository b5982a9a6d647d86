"""Seeding a realistic data set through the service's own write paths.

- a pool of segments ``BENCH_00`` .. ``BENCH_<k-1>`` (the wrk scripts use it),
  created with ``POST /api/v1/segments``;
- users 1..N registered with ``POST /api/v1/users`` in chunks of 10,000;
- each user put in ``memberships`` distinct segments of the pool, drawn per
  user from a seeded generator, one change per user through the service's
  store (``service.store.Store.change_user_segments``, what the change route
  runs, on the deployment's keyspace) from the bench's process; every
  ``DEADLINE_EVERY``-th add carries a ttl (30 days, so no membership runs
  out during a bench), the others have none.

So the data is exactly what the service writes (keys, history events,
counters). The memberships skip HTTP because a general-purpose client costs
the bench about a millisecond of CPU per request on this machine, which on
2 cores would make seeding 100,000 users take minutes and steal the server's
CPU; the wrk scenarios measure the HTTP path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence

import httpx

from bench.context import expect
from bench.results import SeedResult
from bench.stores import service_store
from segments_core.keys import Keyspace
from service.store import AddItem

REGISTER_CHUNK = 10_000
"""Ids per POST /api/v1/users: the API's maximum."""
REGISTER_CONCURRENCY = 2
"""Parallel registration requests: one per core is enough for big bodies."""
DEADLINE_EVERY = 5
"""One add in five has a deadline."""
SEED_TTL_MS = 30 * 86_400 * 1000
"""Deadline of seeded memberships: far enough not to expire mid-bench."""
SEED_CONCURRENCY = 256
"""Changes in flight at once: they share the store's pipelined connection."""
PROGRESS_EVERY_S = 10.0
POOL_PREFIX = "BENCH_"
"""Slug prefix of the pool (``bench/lua/common.lua`` builds the same names)."""


def pool(size: int) -> list[str]:
    return [f"{POOL_PREFIX}{i:02d}" for i in range(size)]


def memberships_of(user_id: int, slugs: Sequence[str], count: int, seed: int) -> list[AddItem]:
    """The add items of one user: ``count`` distinct slugs, some with a ttl."""
    rng = random.Random(seed * 1_000_003 + user_id)
    picked = rng.sample(list(slugs), min(count, len(slugs)))
    return [
        AddItem(slug, 0, SEED_TTL_MS if (user_id + i) % DEADLINE_EVERY == 0 else 0)
        for i, slug in enumerate(picked)
    ]


async def _workers(n: int, items: Iterator[int], job: Callable[[int], Awaitable[None]]) -> None:
    """``n`` tasks taking the next item of ``items`` until none is left."""

    async def worker() -> None:
        for item in items:
            await job(item)

    await asyncio.gather(*(worker() for _ in range(n)))


async def register_users(
    http: httpx.AsyncClient, first: int, last: int, log: Callable[[str], None]
) -> float:
    """Register users ``first..last`` (inclusive); returns the seconds it took."""
    started = time.perf_counter()

    async def job(start: int) -> None:
        ids = list(range(start, min(start + REGISTER_CHUNK, last + 1)))
        expect(await http.post("/api/v1/users", json={"user_ids": ids}), "register users")

    await _workers(REGISTER_CONCURRENCY, iter(range(first, last + 1, REGISTER_CHUNK)), job)
    seconds = time.perf_counter() - started
    log(f"registered users {first:,}..{last:,} in {seconds:.1f} s")
    return seconds


async def seed(
    http: httpx.AsyncClient,
    redis_url: str,
    keyspace: Keyspace,
    users: int,
    per_user: int,
    segments: int,
    seed_value: int,
    log: Callable[[str], None],
    before_memberships: Callable[[], Awaitable[object]],
) -> SeedResult:
    """The whole data set; ``before_memberships`` runs between registration and
    memberships (the memory baseline is taken there)."""
    slugs = pool(segments)
    for slug in slugs:  # a segment that exists already (409) is kept
        resp = await http.post("/api/v1/segments", json={"slug": slug, "description": "bench"})
        expect(resp, f"create segment {slug}", 201, 409)
    register_s = await register_users(http, 1, users, log)
    await before_memberships()
    counts = [0, 0]
    started = last_log = time.perf_counter()

    async with service_store(redis_url, keyspace) as store:

        async def job(user: int) -> None:
            nonlocal last_log
            items = memberships_of(user, slugs, per_user, seed_value)
            await store.change_user_segments(user, items, [])
            counts[0] += len(items)
            counts[1] += sum(i.ttl_ms > 0 for i in items)
            if (now := time.perf_counter()) - last_log > PROGRESS_EVERY_S:
                last_log = now
                log(f"  seeded {user:,} users ({user / (now - started):,.0f}/s)")

        await _workers(SEED_CONCURRENCY, iter(range(1, users + 1)), job)
    seconds = time.perf_counter() - started
    log(f"seeded {counts[0]:,} memberships of {users:,} users in {seconds:.1f} s")
    return SeedResult(
        users=users,
        segments=segments,
        memberships=counts[0],
        with_deadline=counts[1],
        register_s=register_s,
        memberships_s=seconds,
        requests_per_s=users / seconds if seconds > 0 else 0.0,
    )
