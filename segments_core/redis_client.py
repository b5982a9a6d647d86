"""Connects to a single Redis or a Redis Cluster, whichever REDIS_URL names.

On a cluster the client is :class:`ClusterClient`, redis-py's ``RedisCluster``
with three changes that keep a service on its feet while the cluster
changes shape (each found on a real cluster, see docs/cluster.md):

- it is initialised (slot map loaded) before :func:`connect` returns, so
  the first commands of many concurrent tasks go to the right nodes;
- when redis-py resets its view of the cluster (a ``CLUSTERDOWN`` reply
  during a failover), it closes idle connections at once and busy ones only
  when their command is done. redis-py closes every connection then,
  including ones other tasks are using, which fails their commands
  (``'NoneType' object has no attribute 'writelines'``) on healthy nodes too;
- a command refused because its slot is being migrated (redis-py gives up
  with ``ClusterError: TTL exhausted`` after its redirections) is tried
  again a few times within :data:`MIGRATION_WAITS_S`, so a short migration
  costs latency, not errors. A longer one gets 503 (segments_core.unavailable).

redis-py's own reset after every few ``MOVED`` replies is turned off
(``reinitialize_steps=0``): each ``MOVED`` updates the slot it names, which
is all a failover or a finished migration needs, and a migrating slot (whose
target answers ``MOVED`` when redis-py's ``ASKING`` reaches it on another
connection than the command) no longer resets the client for everyone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError
from redis.exceptions import ConnectionError as RedisConnectionError

CONNECT_TIMEOUT_S = 0.5
"""A Redis that does not accept a connection this fast is treated as down (503)."""
COMMAND_TIMEOUT_S = 1.5
"""Far above any script call (bounded to milliseconds), and below the 2 s in
which a request must get its 503 when Redis is stuck (docs/api.md): a
command that times out is not sent again (see ``retry`` below)."""
MIGRATION_WAITS_S = (0.02, 0.05, 0.1, 0.2)
"""Pauses before each new try of a command whose slot is migrating (370 ms in
all): a slot of a few thousand keys moves within that; a bigger one gets 503."""


class ClusterClient(RedisCluster):
    """redis-py's asyncio RedisCluster, safe under failovers and migrations (module doc)."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        for pause in MIGRATION_WAITS_S:
            try:
                return await super().execute_command(*args, **kwargs)
            except ClusterError as exc:
                # Exactly ClusterError: redirections (ASK, MOVED, TRYAGAIN)
                # ran out, so the command never ran and can be sent again.
                # Its subclass ClusterDownError has redis-py's own retries.
                if type(exc) is not ClusterError:
                    raise
            await asyncio.sleep(pause)
        return await super().execute_command(*args, **kwargs)

    async def aclose(self) -> None:
        """Close every connection: idle ones now, busy ones when their command is done.

        Also what redis-py calls to reload the slot map (on CLUSTERDOWN, or a
        slot no node serves): the next command loads it again.
        """
        self._initialize = True
        # Both maps: a startup node can be another object than the node of
        # the same name in the cache, with connections of its own.
        manager = self.nodes_manager
        nodes = [*manager.startup_nodes.values(), *manager.nodes_cache.values()]
        for node in nodes:
            node.update_active_connections_for_reconnect()
        await asyncio.gather(
            *(node.disconnect_free_connections() for node in nodes),
            return_exceptions=True,
        )


async def connect(url: str, *, max_connections: int = 256, **overrides: Any) -> Any:
    """A client for ``url``; a cluster is detected by asking the node.

    ``overrides`` replace the defaults below (the archiver reads bytes, and
    blocks longer than a command may take). A cluster client comes back
    initialised: it knows every node and slot before its first command.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": COMMAND_TIMEOUT_S,
        # One quick reconnect hides a restarted server or a dropped idle
        # connection; a Redis that stays down answers 503 within milliseconds.
        # Every script is idempotent in effect, so a repeated call is safe.
        # (On a cluster: one more try after a lost connection or CLUSTERDOWN,
        # with the slot map loaded again in between.)
        # Only lost connections: a timeout is not retried (redis-py would by
        # default), so a frozen Redis costs one COMMAND_TIMEOUT_S, not two.
        "retry": Retry(
            ExponentialBackoff(cap=0.1, base=0.01),
            retries=1,
            supported_errors=(RedisConnectionError,),
        ),
        "retry_on_error": [RedisConnectionError],
        **overrides,
    }
    probe = Redis.from_url(url, **options)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    if not info.get("cluster_enabled"):
        return Redis.from_url(url, max_connections=max_connections, **options)
    # max_connections is per node here; redis-py's default (100) fails a
    # command at once (MaxConnectionsError) when more are in flight to a node.
    cluster = ClusterClient.from_url(
        url, reinitialize_steps=0, max_connections=max_connections, **options
    )
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster
