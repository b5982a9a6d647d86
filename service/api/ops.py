"""Operations endpoints: liveness, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import MediaType, Response, get
from litestar.di import NamedDependency
from prometheus_client import REGISTRY, generate_latest
from redis.exceptions import RedisError

from service.metrics import refresh_lag, render_metrics
from service.store import Store

READY_TIMEOUT_S = 1.0


@get("/healthz", summary="The process is alive", tags=["operations"], opt={"public": True})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Redis reachable; 503 when not", tags=["operations"], opt={"public": True})
async def readyz(store: NamedDependency[Store]) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {}
    try:
        await asyncio.wait_for(store.redis.ping(), READY_TIMEOUT_S)
        checks["redis"] = "ok"
    except (RedisError, TimeoutError) as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
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
    body, content_type = await render_metrics(store)
    await refresh_lag(store.redis, store.keyspace.history_streams())
    return Response(body + generate_latest(REGISTRY), media_type=content_type)


OPS_ROUTES = [healthz, readyz, metrics]
