"""Operations endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import MediaType, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from psycopg_pool import AsyncConnectionPool

from segments_core.streams import archiver_lag
from segments_core.unavailable import REDIS_CLIENT_ERRORS
from service import metrics as service_metrics
from service.settings import Settings
from service.store import Store

READY_TIMEOUT_S = 1.0
"""Bound of each readiness check (they run at once: /readyz answers within it)."""
OK = "ok"


@get("/healthz", summary="The process is alive", tags=["operations"], opt={"public": True})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _failure(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READY_TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unavailable: {type(exc).__name__}" + (f": {text[:120]}" if text else "")


async def _redis(store: Store) -> str:
    try:
        await asyncio.wait_for(store.redis.ping(), READY_TIMEOUT_S)
    except (*REDIS_CLIENT_ERRORS, TimeoutError) as exc:
        service_metrics.redis_error(exc)
        return _failure(exc)
    return OK


async def _postgres(pool: AsyncConnectionPool | None) -> str:
    if pool is None:
        return "not configured (DATABASE_URL)"

    async def select_one() -> None:
        async with pool.connection(timeout=READY_TIMEOUT_S) as conn:
            await conn.execute("SELECT 1")

    try:
        await asyncio.wait_for(select_one(), READY_TIMEOUT_S)
    except TimeoutError:  # the pool could not connect (or the query hung)
        return f"unavailable: no connection within {READY_TIMEOUT_S:g} s"
    except Exception as exc:  # psycopg's and the pool's errors: all "not ready"
        return _failure(exc)
    return OK


async def _archiver(store: Store, max_lag_s: float) -> str:
    try:
        lag = await asyncio.wait_for(
            archiver_lag(store.redis, store.keyspace.history_streams()), READY_TIMEOUT_S
        )
    except (*REDIS_CLIENT_ERRORS, TimeoutError) as exc:
        service_metrics.redis_error(exc)
        return f"lag unknown: {_failure(exc)}"
    if lag.max_lag_s > max_lag_s:
        worst = max(lag.streams, key=lambda s: s.lag_s)
        return (
            f"lagging: {lag.max_lag_s:.1f} s behind on {worst.stream}"
            f" (bound {max_lag_s:g} s, SEGMENTS_READY_MAX_LAG)"
        )
    return OK


@get(
    "/readyz",
    summary="Redis, PostgreSQL and the archiver ready; 503 when one is not",
    description="Each check is `ok` or a short reason. `archiver`: the oldest event not yet "
    "in PostgreSQL is younger than SEGMENTS_READY_MAX_LAG seconds.",
    tags=["operations"],
    opt={"public": True},
)
async def readyz(
    store: NamedDependency[Store], settings: NamedDependency[Settings], state: State
) -> Response[dict[str, Any]]:
    redis, postgres, archiver = await asyncio.gather(
        _redis(store), _postgres(state.pg), _archiver(store, settings.ready_max_lag_s)
    )
    checks = {"redis": redis, "postgres": postgres, "archiver": archiver}
    ready = all(v == OK for v in checks.values())
    return Response(
        {"ready": ready, "checks": checks},
        status_code=200 if ready else 503,
        media_type=MediaType.JSON,
    )


@get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    media_type=MediaType.TEXT,
    opt={"public": True},
)
async def metrics(store: NamedDependency[Store]) -> Response[bytes]:
    body, content_type = await service_metrics.render(store)
    return Response(body, media_type=content_type)


OPS_ROUTES = [healthz, readyz, metrics]
