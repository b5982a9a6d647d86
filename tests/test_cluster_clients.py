"""The Redis clients under the conditions a cluster creates (segments_core).

- which failures mean "not now" (503) and which are bugs (500);
- the cluster client: initialised before use, resets that never cut a
  command in flight, a migrating slot waited out briefly;
- the archiver carries on after any error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    MasterDownError,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
    TryAgainError,
)

from archiver.worker import StreamWorker
from segments_core.redis_client import MIGRATION_BUDGET_S, ClusterClient, connect
from segments_core.unavailable import error_code, is_unavailable
from tests.support.cluster import RedisClusterServers
from tests.support.history import (
    Event,
    add_events,
    archived,
    fast_config,
    running_archiver,
    wait_for,
)

# -- "not now" -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionError("Connection refused"),
        TimeoutError("Timeout reading from socket"),
        BusyLoadingError("Redis is loading the dataset in memory"),
        ClusterDownError("The cluster is down"),
        MasterDownError("Link with MASTER is down"),
        TryAgainError("Multiple keys request during rehashing of slot"),
        ClusterError("TTL exhausted."),
        SlotNotCoveredError('Slot "7" not covered by the cluster.'),
        ResponseError("BUSY Redis is busy running a script."),
        ResponseError("READONLY You can't write against a read only replica. script: f, on @user"),
        # Redis 6.2 wraps the error of a redis.call inside a script in its own words
        ResponseError(
            "Error running script (call to f_1): @user_script:9: @user_script: 9:"
            " -READONLY You can't write against a read only replica.",
            status_code="ERR",
        ),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        OSError(104, "Connection reset by peer"),
    ],
    ids=repr,
)
def test_not_now(exc: BaseException) -> None:
    assert is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        ResponseError("unknown command 'NOPE'", status_code="ERR"),
        ResponseError("Error running script: @user_script:3: attempt to index a nil value"),
        ValueError("a bug"),
        AttributeError("'NoneType' object has no attribute 'writelines'"),
    ],
    ids=repr,
)
def test_bugs_are_not_not_now(exc: BaseException) -> None:
    assert not is_unavailable(exc)


def test_error_code_reads_redis_6_and_7_script_errors() -> None:
    assert error_code(ResponseError("x -MASTERDOWN y", status_code="ERR")) == "MASTERDOWN"
    assert error_code(ResponseError("LOADING Redis is loading")) == "LOADING"
    assert error_code(ValueError("x")) is None


# -- the cluster client -----------------------------------------------------------------------


# The tests below start a cluster of their own (6 processes): CI runs them in its
# cluster step, with the rest of what is marked `cluster`.


@pytest.fixture(scope="module")
def private_cluster() -> Iterator[RedisClusterServers]:
    """A cluster of this module's own: the tests change slot states."""
    with RedisClusterServers() as servers:
        yield servers


@pytest.fixture
async def cluster_client(private_cluster: RedisClusterServers) -> AsyncIterator[Any]:
    private_cluster.flush()
    client = await connect(private_cluster.url)
    yield client
    await client.aclose()


@pytest.mark.cluster
async def test_connect_returns_an_initialised_cluster_client(cluster_client: Any) -> None:
    assert isinstance(cluster_client, ClusterClient)
    # The slot map is loaded before the first command, so many tasks' first
    # commands all go straight to the right node.
    assert len(cluster_client.get_primaries()) == 3
    keys = [f"k{i}" for i in range(300)]
    await asyncio.gather(*(cluster_client.set(k, k) for k in keys))
    assert await asyncio.gather(*(cluster_client.get(k) for k in keys)) == keys


async def _hammer(client: Any, resets: int) -> None:
    """Commands on every node from many tasks, while the client is reset as
    redis-py resets it on CLUSTERDOWN."""

    async def work(i: int) -> None:
        for n in range(150):
            await client.set(f"w{i}:{n}", n)
            assert int(await client.get(f"w{i}:{n}")) == n

    async def reset() -> None:
        for _ in range(resets):
            await asyncio.sleep(0.002)
            await client.aclose()

    await asyncio.gather(*(work(i) for i in range(30)), reset())


@pytest.mark.cluster
async def test_a_reset_never_cuts_a_command_in_flight(cluster_client: Any) -> None:
    await _hammer(cluster_client, resets=40)


@pytest.mark.cluster
async def test_redis_py_alone_cuts_commands_in_flight(private_cluster: RedisClusterServers) -> None:
    """What the test above guards against: redis-py's own reset closes
    connections other tasks are using. (If redis-py stops doing that, this
    test fails and ClusterClient.aclose can go.)"""
    plain = RedisCluster.from_url(private_cluster.url)
    await plain.initialize()
    try:
        with pytest.raises((AttributeError, ConnectionError)):
            await _hammer(plain, resets=40)
    finally:
        await plain.aclose()


SCRIPT = "redis.call('INCR', KEYS[1]); redis.call('INCR', KEYS[2]); return 1"


@pytest.mark.cluster
async def test_a_short_migration_is_waited_out(
    cluster_client: Any, private_cluster: RedisClusterServers
) -> None:
    keys = ["{m1}:a", "{m1}:b"]
    await cluster_client.eval(SCRIPT, 2, *keys)
    slot = cluster_client.keyslot(keys[0])
    source = private_cluster.master_of_slot(slot)
    target = next(n for n in private_cluster.masters() if n.port != source.port)
    # Half moved: one key on each side, so a script on both gets TRYAGAIN/ASK.
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    source.call("MIGRATE", "127.0.0.1", target.port, keys[0], 0, 5000)

    async def finish_soon() -> None:
        await asyncio.sleep(MIGRATION_BUDGET_S / 5)
        source.call("MIGRATE", "127.0.0.1", target.port, keys[1], 0, 5000)
        for node in (target, source, *private_cluster.masters()):
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)

    call = asyncio.create_task(cluster_client.eval(SCRIPT, 2, *keys))
    await finish_soon()
    assert await call == 1
    assert [int(v) for v in await asyncio.gather(*map(cluster_client.get, keys))] == [2, 2]
    private_cluster.wait_healthy()


@pytest.mark.cluster
async def test_a_long_migration_is_not_now(
    cluster_client: Any, private_cluster: RedisClusterServers
) -> None:
    keys = ["{m2}:a", "{m2}:b"]
    await cluster_client.eval(SCRIPT, 2, *keys)
    slot = cluster_client.keyslot(keys[0])
    source = private_cluster.master_of_slot(slot)
    target = next(n for n in private_cluster.masters() if n.port != source.port)
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    source.call("MIGRATE", "127.0.0.1", target.port, keys[0], 0, 5000)
    try:
        with pytest.raises(Exception) as refused:
            await cluster_client.eval(SCRIPT, 2, *keys)
        assert is_unavailable(refused.value), repr(refused.value)
    finally:
        source.call("MIGRATE", "127.0.0.1", target.port, keys[1], 0, 5000)
        for node in (target, source, *private_cluster.masters()):
            node.call("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        private_cluster.wait_healthy()
    assert await cluster_client.eval(SCRIPT, 2, *keys) == 1


# -- the archiver carries on ------------------------------------------------------------------


async def test_archiver_carries_on_after_an_unexpected_error(
    redis: Any, clean_redis_url: str, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error, not only Redis's or PostgreSQL's: logged, backed off, resumed."""
    failures = {"left": 3}
    original = StreamWorker._read_new

    async def flaky(self: StreamWorker) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await original(self)

    monkeypatch.setattr(StreamWorker, "_read_new", flaky)
    keys = await add_events(
        redis, [Event(user_id=u, segment="S", ts_ms=1_700_000_000_000 + u) for u in range(1, 40)]
    )
    async with running_archiver(clean_redis_url, db, fast_config()) as task:
        await wait_for(lambda: set(keys) <= set(archived(db)), what="every event archived")
        assert not task.done()
    assert failures["left"] == 0


# -- waiting for a replica (SEGMENTS_WAIT_REPLICAS) ---------------------------------------------


@pytest.mark.cluster
async def test_waiting_for_a_replica_returns_once_the_replica_holds_the_change(
    private_cluster: RedisClusterServers,
) -> None:
    private_cluster.flush()
    client = await connect(private_cluster.url, wait_replicas=1)
    try:
        sha = await client.script_load(SCRIPT)
        keys = ["{w1}:a", "{w1}:b"]
        master = private_cluster.master_of_slot(client.keyslot(keys[0]))
        replica = private_cluster.replicas_of(master)[0]
        for n in range(1, 51):
            assert await client.execute_command("EVALSHA", sha, 2, *keys) == 1
            # Read on the replica right after the answer: the change is there.
            with replica.connect() as direct:
                direct.execute_command("READONLY")
                assert int(direct.get(keys[1])) == n
    finally:
        await client.aclose()


@pytest.mark.cluster
async def test_a_master_without_its_replica_refuses_to_acknowledge(
    private_cluster: RedisClusterServers,
) -> None:
    private_cluster.flush()
    client = await connect(private_cluster.url, wait_replicas=1)
    try:
        sha = await client.script_load(SCRIPT)
        keys = ["{w2}:a", "{w2}:b"]
        master = private_cluster.master_of_slot(client.keyslot(keys[0]))
        replica = private_cluster.replicas_of(master)[0]
        private_cluster.kill(replica)
        try:
            with pytest.raises(ResponseError) as refused:
                await client.execute_command("EVALSHA", sha, 2, *keys)
            assert is_unavailable(refused.value)
        finally:
            private_cluster.restart(replica)
        assert await client.execute_command("EVALSHA", sha, 2, *keys) == 1
    finally:
        await client.aclose()


async def test_waiting_for_replicas_needs_a_cluster(single_redis_url: str) -> None:
    with pytest.raises(ValueError, match="needs Redis Cluster"):
        await connect(single_redis_url, wait_replicas=1)


@pytest.mark.cluster
async def test_a_connection_closed_under_a_command_is_a_lost_connection(
    cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py can close a connection another task has just taken (module doc
    of segments_core.redis_client); the command then fails as a lost
    connection (503), not with the AttributeError (asyncio) or RuntimeError
    (uvloop) that redis-py lets out."""
    from redis.asyncio.connection import Connection

    for symptom in (
        AttributeError("'NoneType' object has no attribute 'writelines'"),
        RuntimeError("unable to perform operation on <TCPTransport closed=True>"),
    ):

        async def closed(self: Connection, command: Any, symptom: Exception = symptom) -> None:
            raise symptom

        monkeypatch.setattr(Connection, "_send_packed_command", closed)
        with pytest.raises(ConnectionError) as lost:
            await cluster_client.set("k", "v")
        assert is_unavailable(lost.value)
    monkeypatch.undo()
    assert await cluster_client.set("k", "v")


@pytest.mark.cluster
async def test_an_attribute_error_elsewhere_stays_a_bug(
    cluster_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.asyncio.cluster import ClusterNode

    async def broken(self: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError("a bug above the socket")

    monkeypatch.setattr(ClusterNode, "execute_command", broken)
    with pytest.raises(AttributeError):
        await cluster_client.set("k", "v")
