"""Server-side time of the lookup, measured in-process (no HTTP, no load generator).

Calls the hot path (``service.hotpath.HotPath``, what a request to
``GET /api/v1/users/{id}/segments`` runs once uvicorn has parsed it) N times
one after another against a real Redis, and reports p50/p99/p99.9 of each
call's wall time. Seeds USERS users with MEMBERSHIPS segments each first.

    .venv/bin/python -m bench.inprocess redis://127.0.0.1:6379/14 [--calls 100000]

The database is flushed: give it one nobody else uses.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import time
from typing import Any

from segments_core.redis_client import connect
from service.hotpath import HotPath
from service.resp import RespConnection
from service.settings import Settings
from service.store import AddItem, Store


async def measure(url: str, calls: int, users: int, memberships: int) -> dict[str, float]:
    redis = await connect(url)
    await redis.flushdb()
    fast = RespConnection(url)
    store = Store(redis, scripts_via=fast)
    slugs = [f"BENCH_SEGMENT_{i}" for i in range(memberships * 4)]
    for slug in slugs:
        await store.create_segment(slug, "", 0)
    rng = random.Random(7)
    await store.register_users(range(1, users + 1))
    for start in range(1, users + 1, 500):
        await asyncio.gather(
            *(
                store.change_user_segments(
                    uid, [AddItem(s, 0) for s in rng.sample(slugs, memberships)], []
                )
                for uid in range(start, min(start + 500, users + 1))
            )
        )
    hot = HotPath(store, Settings(redis_url=url))

    async def send(_: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scopes = [
        {
            "type": "http",
            "method": "GET",
            "path": f"/api/v1/users/{rng.randint(1, users)}/segments",
            "query_string": b"",
            "headers": [],
        }
        for _ in range(calls)
    ]
    gc.collect()
    gc.freeze()
    samples: list[int] = []
    for scope in scopes:
        t0 = time.perf_counter_ns()
        await hot.handle(scope, receive, send)
        samples.append(time.perf_counter_ns() - t0)
    await fast.aclose()
    await redis.flushdb()
    await redis.aclose()
    samples.sort()
    q = statistics.quantiles(samples, n=1000)
    return {
        "calls": calls,
        "p50_us": q[499] / 1000,
        "p99_us": q[989] / 1000,
        "p999_us": q[998] / 1000,
        "max_us": samples[-1] / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("redis_url")
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--memberships", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(measure(args.redis_url, args.calls, args.users, args.memberships))
    print(
        " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    )


if __name__ == "__main__":
    main()
