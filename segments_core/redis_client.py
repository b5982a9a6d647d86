"""Connects to a single Redis or a Redis Cluster, whichever REDIS_URL names."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

CONNECT_TIMEOUT_S = 0.5
"""A Redis that does not accept a connection this fast is treated as down (503)."""
COMMAND_TIMEOUT_S = 2.0
"""Far above any script call (bounded to milliseconds), far below a client's patience."""


async def connect(url: str, *, max_connections: int = 256, **overrides: Any) -> Any:
    """A client for ``url``; a cluster is detected by asking the node.

    ``overrides`` replace the defaults below (the archiver reads bytes, and
    blocks longer than a command may take).
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        # One quick reconnect hides a restarted server or a dropped idle
        # connection; a Redis that stays down answers 503 within milliseconds.
        # Every script is idempotent in effect, so a repeated call is safe.
        "retry": Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
        "retry_on_error": [RedisConnectionError],
        **overrides,
    }
    probe = Redis.from_url(url, **options)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    if info.get("cluster_enabled"):
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, max_connections=max_connections, **options)
