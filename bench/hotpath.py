"""Server-side time of the lookup, in the bench's process: no HTTP, no queueing.

Calls the service's hot path (``service.hotpath.HotPath``: what a request to
``GET /api/v1/users/{id}/segments`` runs once uvicorn has parsed it) ``CALLS``
times one after the other on the seeded data set, and reports percentiles of
each call's wall time. Set against the wrk figures, it tells the work of a
lookup from the queueing at 64 connections.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import Any

from bench.results import HotPathResult
from bench.stores import service_store
from segments_core.keys import Keyspace
from service.hotpath import HotPath
from service.settings import Settings

CALLS = 20_000


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_: Any) -> None:
    return None


async def measure(url: str, keyspace: Keyspace, users: int, calls: int = CALLS) -> HotPathResult:
    rng = random.Random(7)
    paths = [f"/api/v1/users/{rng.randint(1, users)}/segments" for _ in range(calls)]
    samples: list[int] = []
    async with service_store(url, keyspace) as store:
        hot = HotPath(store, Settings(redis_url=url))
        gc.collect()
        for path in paths:
            scope = {"type": "http", "method": "GET", "path": path, "query_string": b""}
            t0 = time.perf_counter_ns()
            await hot.handle({**scope, "headers": []}, _receive, _send)
            samples.append(time.perf_counter_ns() - t0)
    q = statistics.quantiles(samples, n=1000)
    us = [v / 1e3 for v in (q[499], q[989], q[998], max(samples))]
    return HotPathResult(calls=calls, p50_us=us[0], p99_us=us[1], p999_us=us[2], max_us=us[3])
