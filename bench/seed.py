"""Seeding a realistic data set through the service's own HTTP write paths.

- a pool of segments ``BENCH_00`` .. ``BENCH_<k-1>`` (the wrk scripts use it);
- users 1..N registered with ``POST /api/v1/users`` in chunks of 10,000;
- each user put in ``memberships`` distinct segments of the pool, drawn
  per user from a seeded generator, with one ``POST /api/v1/users/{id}/segments``
  per user; every ``DEADLINE_EVERY``-th add carries a ttl (30 days, so no
  membership runs out during a bench), the others have none.

Going through HTTP means the data is exactly what the service writes (keys,
history events, counters), at the price of one request per user.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.httpclient import Connection, Response, Target
from bench.results import SeedResult

REGISTER_CHUNK = 10_000
"""Ids per POST /api/v1/users: the API's maximum."""
REGISTER_CONCURRENCY = 2
"""Parallel registration requests: one per core is enough for big bodies."""
SEED_CONCURRENCY = 32
"""Parallel membership requests: keeps every API worker busy."""
DEADLINE_EVERY = 5
"""One add in five has a deadline."""
SEED_TTL_S = 30 * 86_400
"""Deadline of seeded memberships: far enough not to expire mid-bench."""
PROGRESS_EVERY_S = 10.0


class SeedError(RuntimeError):
    """The service refused a seeding request."""


@dataclass(frozen=True, slots=True)
class Pool:
    """The bench's segment slugs (the wrk scripts build the same names)."""

    size: int
    prefix: str = "BENCH_"

    def slugs(self) -> list[str]:
        return [f"{self.prefix}{i:02d}" for i in range(self.size)]


def memberships_of(user_id: int, slugs: Sequence[str], count: int, seed: int) -> list[object]:
    """The add items of one user: ``count`` distinct slugs, some with a ttl."""
    rng = random.Random(seed * 1_000_003 + user_id)
    picked = rng.sample(list(slugs), min(count, len(slugs)))
    return [
        {"slug": slug, "ttl_seconds": SEED_TTL_S} if (user_id + i) % DEADLINE_EVERY == 0 else slug
        for i, slug in enumerate(picked)
    ]


def _check(resp: Response, what: str, ok: tuple[int, ...] = (200, 201)) -> None:
    if resp.status not in ok:
        raise SeedError(f"{what}: HTTP {resp.status}: {resp.body[:300]!r}")


async def create_segments(conn: Connection, pool: Pool) -> None:
    """Create the pool's segments; ones that exist already (409) are kept."""
    for slug in pool.slugs():
        resp = await conn.json("POST", "/api/v1/segments", {"slug": slug, "description": "bench"})
        _check(resp, f"create segment {slug}", (201, 409))


async def _run_workers(
    target: Target, token: str | None, workers: int, job: Callable[[Connection], Awaitable[None]]
) -> None:
    conns = [Connection(target, token) for _ in range(workers)]
    try:
        await asyncio.gather(*(job(c) for c in conns))
    finally:
        for c in conns:
            await c.close()


async def register_users(
    target: Target, token: str | None, first: int, last: int, log: Callable[[str], None]
) -> float:
    """Register users ``first..last`` (inclusive); returns the seconds it took."""
    starts = iter(range(first, last + 1, REGISTER_CHUNK))
    started = time.perf_counter()
    done = 0

    async def job(conn: Connection) -> None:
        nonlocal done
        for start in starts:
            ids = list(range(start, min(start + REGISTER_CHUNK, last + 1)))
            _check(await conn.json("POST", "/api/v1/users", {"user_ids": ids}), "register users")
            done += len(ids)

    await _run_workers(target, token, REGISTER_CONCURRENCY, job)
    seconds = time.perf_counter() - started
    log(f"registered users {first}..{last} in {seconds:.1f} s")
    return seconds


async def add_memberships(
    target: Target,
    token: str | None,
    users: int,
    pool: Pool,
    per_user: int,
    seed: int,
    log: Callable[[str], None],
) -> tuple[int, int, float]:
    """One change request per user 1..users; returns (memberships, with deadline, seconds)."""
    slugs = pool.slugs()
    next_user = iter(range(1, users + 1))
    counts = [0, 0]
    started = last_log = time.perf_counter()

    async def job(conn: Connection) -> None:
        nonlocal last_log
        for user in next_user:
            items = memberships_of(user, slugs, per_user, seed)
            resp = await conn.json("POST", f"/api/v1/users/{user}/segments", {"add": items})
            _check(resp, f"seed user {user}")
            counts[0] += len(items)
            counts[1] += sum(1 for i in items if isinstance(i, dict))
            now = time.perf_counter()
            if now - last_log > PROGRESS_EVERY_S:
                last_log = now
                log(f"  seeded {user:,} users ({user / (now - started):,.0f}/s)")

    await _run_workers(target, token, SEED_CONCURRENCY, job)
    return counts[0], counts[1], time.perf_counter() - started


async def seed(
    target: Target,
    token: str | None,
    users: int,
    per_user: int,
    pool: Pool,
    seed_value: int,
    log: Callable[[str], None],
    before_memberships: Callable[[], object] | None = None,
) -> SeedResult:
    """The whole data set; ``before_memberships`` runs between registration and
    memberships (the memory baseline is taken there)."""
    conn = Connection(target, token)
    try:
        await create_segments(conn, pool)
    finally:
        await conn.close()
    register_s = await register_users(target, token, 1, users, log)
    if before_memberships is not None:
        before_memberships()
    memberships, with_deadline, seconds = await add_memberships(
        target, token, users, pool, per_user, seed_value, log
    )
    log(f"seeded {memberships:,} memberships of {users:,} users in {seconds:.1f} s")
    return SeedResult(
        users=users,
        segments=pool.size,
        memberships=memberships,
        with_deadline=with_deadline,
        register_s=register_s,
        memberships_s=seconds,
        requests_per_s=users / seconds if seconds > 0 else 0.0,
    )
