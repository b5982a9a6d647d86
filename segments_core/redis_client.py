"""Connects to a single Redis or a Redis Cluster, whichever REDIS_URL names.

On a cluster the client is :class:`ClusterClient`, redis-py's ``RedisCluster``
with a few changes that keep a service on its feet while the cluster changes
shape (each found on a real cluster, see docs/cluster.md):

- it is initialised (slot map loaded) before :func:`connect` returns, so
  the first commands of many concurrent tasks go to the right nodes;
- when redis-py resets its view of the cluster (a ``CLUSTERDOWN`` reply
  during a failover), it closes idle connections at once and busy ones only
  when their command is done. redis-py closes every connection then,
  including ones other tasks are using, which fails their commands
  (``'NoneType' object has no attribute 'writelines'``) on healthy nodes
  too; a failed load of the slot map closes nothing either;
- a connection redis-py closed under a command (it closes a failed node's
  idle connections from a snapshot another task may have taken one from)
  fails as the lost connection it is (``ConnectionError``, 503), not as an
  ``AttributeError`` (500);
- a command refused because its slot is being migrated (redis-py gives up
  with ``ClusterError: TTL exhausted`` after its redirections) is tried
  again a few times within :data:`MIGRATION_BUDGET_S`, so a short migration
  costs latency, not errors. A longer one gets 503 (segments_core.unavailable).

With ``wait_replicas`` (``SEGMENTS_WAIT_REPLICAS``), every script call is
followed by ``WAIT`` on the same connection of the same master: the call
returns only once that many replicas hold its effects, and fails with a
"not now" error (503) when they do not within :data:`WAIT_TIMEOUT_MS`. That
closes Redis's replication window for acknowledged changes (docs/cluster.md).

redis-py's own reset after every few ``MOVED`` replies is turned off
(``reinitialize_steps=0``): each ``MOVED`` updates the slot it names, which
is all a failover or a finished migration needs, and a migrating slot (whose
target answers ``MOVED`` when redis-py's ``ASKING`` reaches it on another
connection than the command) no longer resets the client for everyone.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CONNECT_TIMEOUT_S = 0.5
"""A Redis that does not accept a connection this fast is treated as down (503)."""
COMMAND_TIMEOUT_S = 1.5
"""Far above any script call (bounded to milliseconds), and below the 2 s in
which a request must get its 503 when Redis is stuck (docs/api.md): a
command that times out is not sent again (see ``retry`` below)."""
MIGRATION_WAITS_S = (0.02, 0.05, 0.1, 0.2)
"""Pauses before each new try of a command whose slot is migrating."""
MIGRATION_BUDGET_S = 0.5
"""How long a command waits for its slot's migration to end, tries included,
before it fails "not now" (503): a shard moved 1,000 keys per MIGRATE is
usually done before; a longer move costs its shard 503s, never others."""
REDIRECTIONS = 8
"""Redirections (MOVED, ASK, TRYAGAIN) redis-py follows for one try (its
default, 16, spends up to 400 ms in TRYAGAIN pauses alone)."""


WAIT_TIMEOUT_MS = 1000
"""How long a script call waits for its replicas (``wait_replicas``) before it
is answered "not now": far above a healthy replica's lag, short enough that
a change to a master without a replica fails fast."""


class ClusterClient(RedisCluster):
    """redis-py's asyncio RedisCluster, safe under failovers and migrations (module doc)."""

    wait_replicas = 0
    """Replicas every script call waits for (0: none, Redis's asynchronous replication)."""
    RedisClusterRequestTTL = REDIRECTIONS

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.wait_replicas and args[0] == "EVALSHA" and not kwargs:
                return await self._replicated(*args)
            return await self._execute_waiting_out_migrations(*args, **kwargs)
        except (AttributeError, RuntimeError) as exc:
            # redis-py closes a node's idle connections after a failure there
            # from a snapshot of its free list; a task that took one of them
            # meanwhile finds it closed under its command: "'NoneType' object
            # has no attribute 'writelines'" (asyncio), "unable to perform
            # operation on <TCPTransport closed=True ...>" (uvloop). That is a
            # lost connection.
            if _raised_in_redis_connection(exc):
                raise RedisConnectionError(f"connection closed under the command ({exc})") from exc
            raise

    async def _execute_waiting_out_migrations(self, *args: Any, **kwargs: Any) -> Any:
        clock = asyncio.get_running_loop().time
        started = clock()
        for pause in MIGRATION_WAITS_S:
            try:
                return await super().execute_command(*args, **kwargs)
            except ClusterError as exc:
                # Exactly ClusterError: redirections (ASK, MOVED, TRYAGAIN)
                # ran out, so the command never ran and can be sent again.
                # Its subclass ClusterDownError has redis-py's own retries.
                if type(exc) is not ClusterError or clock() - started + pause > MIGRATION_BUDGET_S:
                    raise
            await asyncio.sleep(pause)
        return await super().execute_command(*args, **kwargs)

    async def _replicated(self, *args: Any) -> Any:
        """``EVALSHA`` then ``WAIT``, written together on one connection of the
        master of the script's first key (WAIT counts the writes of its own
        connection). Redirections are followed as redis-py follows them, with
        ``ASKING`` on that same connection."""
        key = args[3]  # EVALSHA sha numkeys key ...
        clock = asyncio.get_running_loop().time
        started = clock()
        pauses = iter(MIGRATION_WAITS_S)
        asked: ClusterNode | None = None
        for _ in range(self.RedisClusterRequestTTL):
            if self._initialize:
                await self.initialize()
            node = asked or self.nodes_manager.get_node_from_slot(self.keyslot(key))
            wait = ("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)
            sent = [("ASKING",), args, wait] if asked else [args, wait]
            commands = [PipelineCommand(i, *command) for i, command in enumerate(sent)]
            try:
                await node.execute_pipeline(commands)
            except (RedisConnectionError, RedisTimeoutError):
                # As redis-py after a failed node: its connections renewed, the
                # node tried last, the slot map loaded again by the next call.
                node.update_active_connections_for_reconnect()
                await node.disconnect_free_connections()
                self.nodes_manager.move_node_to_end_of_cached_nodes(node.name)
                self._initialize = True
                raise
            asked = None
            result, acked = commands[-2].result, commands[-1].result
            if isinstance(result, MovedError):  # (a MovedError is an AskError too)
                await self.nodes_manager.move_slot(result)
                continue
            if isinstance(result, AskError):
                asked = self.get_node(host=result.host, port=result.port)
                if asked is None:
                    self._initialize = True
                continue
            if isinstance(result, TryAgainError):
                pause = next(pauses, None)
                if pause is None or clock() - started + pause > MIGRATION_BUDGET_S:
                    break
                await asyncio.sleep(pause)
                continue
            if isinstance(result, ClusterDownError):
                self._initialize = True
                raise result
            if isinstance(result, BaseException):
                raise result
            if isinstance(acked, BaseException):
                raise acked
            if int(acked) < self.wait_replicas:
                # The change stands on the master; the caller answers 503 and
                # a retry repeats it harmlessly (every script is idempotent in
                # effect).
                raise ResponseError(
                    f"NOREPLICAS {acked} of {self.wait_replicas} replicas acknowledged"
                    f" within {WAIT_TIMEOUT_MS} ms"
                )
            return result
        raise ClusterError("TTL exhausted.")

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> ClusterClient:
        """Load the slot map (and the command table) if it is due.

        As redis-py's, except on failure: redis-py then closes every
        connection of every node, under the commands of other tasks on
        healthy nodes; here nothing is closed, the node that failed goes to
        the end of the list, and the next command tries again.
        """
        if not self._initialize:
            return self
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._initialize:
                manager = self.nodes_manager
                await manager.initialize(
                    additional_startup_nodes_info=additional_startup_nodes_info,
                    last_failed_node_name=last_failed_node_name,
                )
                default = manager.default_node
                try:
                    await self.commands_parser.initialize(default)
                except (RedisConnectionError, RedisTimeoutError):
                    if default is not None:
                        manager.move_node_to_end_of_cached_nodes(default.name)
                    raise
                self._initialize = False
        return self

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


def _raised_in_redis_connection(exc: BaseException) -> bool:
    """Whether ``exc`` came out of redis-py's socket code (a connection's
    write or read), not out of ours or of a reply's parsing."""
    return any(
        frame.filename.replace("\\", "/").endswith("redis/asyncio/connection.py")
        for frame in traceback.extract_tb(exc.__traceback__)
    )


async def connect(
    url: str, *, max_connections: int = 256, wait_replicas: int = 0, **overrides: Any
) -> Any:
    """A client for ``url``; a cluster is detected by asking the node.

    ``overrides`` replace the defaults below (the archiver reads bytes, and
    blocks longer than a command may take). A cluster client comes back
    initialised: it knows every node and slot before its first command.
    ``wait_replicas``: script calls wait for that many replicas (Cluster only).
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
        if wait_replicas:
            raise ValueError("waiting for replicas (SEGMENTS_WAIT_REPLICAS) needs Redis Cluster")
        return Redis.from_url(url, max_connections=max_connections, **options)
    # max_connections is per node here; redis-py's default (100) fails a
    # command at once (MaxConnectionsError) when more are in flight to a node.
    cluster = ClusterClient.from_url(
        url, reinitialize_steps=0, max_connections=max_connections, **options
    )
    cluster.wait_replicas = wait_replicas
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster
