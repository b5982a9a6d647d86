"""Redis Cluster failovers and a slot migration under load (SPEC §6).

A real cluster (3 masters, 1 replica each, ``cluster-require-full-coverage
no``), ``segments serve`` and ``segments archiver`` as real processes, and a
steady stream of changes and lookups over HTTP while the cluster changes
shape: a coordinated ``CLUSTER FAILOVER``, a master killed with SIGKILL, a
slot migrated key by key. In each:

- no 500 and no request left unanswered: a request that touches the shard in
  trouble answers 200 or 503 with Retry-After, every other one 200;
- the API and the archiver are never restarted, and serve the touched shards
  again once the cluster is healthy;
- every acknowledged change is in the state and in the history afterwards,
  exactly once. The kill is the exception Redis itself makes: a write
  acknowledged by the master but not yet sent to its replica is lost with it
  (asynchronous replication). The test counts such losses, checks that each
  was acknowledged right before the kill, and that the state and the history
  agree about it.

The figures (requests by status, how long answers were not 200, acks lost)
are printed, and appended to ``$SEGMENTS_FAILOVER_REPORT`` when set.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.cluster import RedisClusterServers
from tests.support.failover import (
    SLUGS,
    Accounts,
    Figures,
    Load,
    Outcome,
    Stack,
    account,
    figures,
    report,
    shards_on,
    wait_archived,
)
from tests.support.history import prepare_database

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    # Six Redis processes and the whole stack per test, about half a minute
    # each: run where the suite runs on a cluster (TEST_REDIS_CLUSTER=1, as
    # .ci/run does), not in every run of the suite.
    pytest.mark.skipif(
        os.environ.get("TEST_REDIS_CLUSTER") != "1",
        reason="failover tests run with TEST_REDIS_CLUSTER=1 (.ci/run's cluster step)",
    ),
]

STEADY_REQUESTS = 300
"""Requests answered before the operation, and again after the cluster is healthy."""
REPLICATION_WINDOW_S = 1.0
"""An acknowledged write lost in the kill must have been acknowledged at most
this long before it: far above the replication lag on loopback (microseconds),
far below the length of the run, so a loss of anything older fails the test."""


@pytest.fixture
def cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(full_coverage=False) as servers:
        yield servers


@pytest.fixture
def stack_env() -> dict[str, str]:
    """Settings of the stack under test (a test overrides it to change them)."""
    return {}


@pytest.fixture
def stack(
    cluster: RedisClusterServers, fresh_pg_url: str, tmp_path: Path, stack_env: dict[str, str]
) -> Iterator[Stack]:
    database_url = prepare_database(fresh_pg_url)
    with Stack(cluster.url, database_url, tmp_path, **stack_env) as running:
        running.database_url = database_url  # type: ignore[attr-defined]
        with httpx.Client(base_url=running.url) as http:
            for slug in SLUGS:
                assert http.post("/api/v1/segments", json={"slug": slug}).status_code == 201
        yield running


def run_scenario(
    name: str,
    stack: Stack,
    cluster: RedisClusterServers,
    operate: Callable[[], tuple[set[int], float]],
) -> tuple[Figures, Accounts, list[Outcome], float]:
    """Load, then ``operate()`` (returns the shards it touches and the seconds
    until the cluster was healthy), load on; then the accounts."""
    load = Load(stack.url).start()
    try:
        load.wait_for(STEADY_REQUESTS)
        started = time.monotonic()
        touched, healthy_s = operate()
        recovered = len(load.outcomes)
        load.wait_for(STEADY_REQUESTS)
    finally:
        outcomes = load.stop()
    stack.assert_running()
    asyncio.run(wait_archived(cluster.url))
    accounts = account(stack.url, stack.database_url, outcomes)  # type: ignore[attr-defined]
    fig = figures(name, outcomes, touched, started, healthy_s)
    fig.acknowledged, fig.lost = accounts.acknowledged, len(accounts.lost)
    report(fig)
    stack.assert_running()
    check_answers(stack, outcomes, touched, recovered)
    return fig, accounts, outcomes, started


def check_answers(stack: Stack, outcomes: list[Outcome], touched: set[int], recovered: int) -> None:
    unexpected = [o for o in outcomes if o.status not in (200, 503)]
    assert not unexpected, f"{unexpected[:5]}\n{stack.logs()}"
    others = [o for o in outcomes if o.shard not in touched and o.status != 200]
    assert not others, f"shards not touched answered {others[:5]}"
    # Once the cluster is healthy again the touched shards are served again.
    after = [o for o in outcomes[recovered:] if o.shard in touched]
    assert after, "no request reached the touched shards after the recovery"
    assert after[-1].status == 200
    assert "Traceback" not in stack.log_text("api.log"), stack.logs()
    assert "Traceback" not in stack.log_text("archiver.log"), stack.logs()


def assert_nothing_lost(accounts: Accounts) -> None:
    assert accounts.acknowledged > 0
    assert accounts.lost == []
    assert accounts.state_only == []
    assert accounts.history_only == []
    assert accounts.duplicates == []


def test_coordinated_failover_loses_nothing(stack: Stack, cluster: RedisClusterServers) -> None:
    master = cluster.masters()[0]
    replica = cluster.replicas_of(master)[0]

    def operate() -> tuple[set[int], float]:
        touched = shards_on(master.slots)
        return touched, cluster.failover(replica)

    _, accounts, _, _ = run_scenario("CLUSTER FAILOVER", stack, cluster, operate)
    assert_nothing_lost(accounts)
    assert cluster.node_at(replica.port).is_master


def test_slot_migrated_under_load_loses_nothing(stack: Stack, cluster: RedisClusterServers) -> None:
    from redis.crc import key_slot

    from tests.support import SHARD_KEYS

    tag = SHARD_KEYS[3].tag
    slot = key_slot(tag.encode())
    source = cluster.master_of_slot(slot)

    def operate() -> tuple[set[int], float]:
        started = time.monotonic()
        # A few keys per MIGRATE with a pause in between: the slot stays half
        # moved (ASK, TRYAGAIN) for a while, as a big reshard keeps it.
        moved = cluster.migrate_slot(slot, batch=5, pause_s=0.02)
        assert moved > 0
        return shards_on([slot]), time.monotonic() - started

    _, accounts, _, _ = run_scenario("slot migration", stack, cluster, operate)
    assert_nothing_lost(accounts)
    assert cluster.master_of_slot(slot).port != source.port


def test_master_killed_loses_at_most_the_replication_window(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    # The node REDIS_URL names, the worst one to lose: clients must carry on
    # with the nodes they learnt of.
    victim = next(n for n in cluster.masters() if f"redis://{n.address}" == stack.env["REDIS_URL"])

    def operate() -> tuple[set[int], float]:
        touched = shards_on(victim.slots)
        return touched, cluster.kill(victim)

    fig, accounts, outcomes, killed_at = run_scenario("master SIGKILL", stack, cluster, operate)
    assert accounts.acknowledged > 0
    assert accounts.state_only == []  # never a change without its event
    assert accounts.duplicates == []
    acked_at = _acknowledged_at(outcomes)
    for user, slug, op in [*accounts.lost, *accounts.history_only]:
        when = acked_at[(user, slug, op)]
        assert killed_at - REPLICATION_WINDOW_S <= when <= killed_at + fig.healthy_s, (
            f"{op} of {slug} for user {user}, acknowledged {killed_at - when:.3f} s before"
            " the kill, was lost"
        )
    # The killed node comes back as a replica; nothing changes for the service.
    cluster.restart(victim)
    assert not cluster.node_at(victim.port).is_master


def _acknowledged_at(outcomes: list[Outcome]) -> dict[tuple[int, str, str], float]:
    out: dict[tuple[int, str, str], Any] = {}
    for o in outcomes:
        if o.kind == "change" and o.status == 200:
            assert o.slug is not None and o.op is not None
            out[(o.user, o.slug, o.op)] = o.ended
    return out


@pytest.mark.parametrize("stack_env", [{"SEGMENTS_WAIT_REPLICAS": "1"}])
def test_master_killed_loses_nothing_when_changes_wait_for_a_replica(
    stack: Stack, cluster: RedisClusterServers
) -> None:
    """SEGMENTS_WAIT_REPLICAS=1: a 200 means the replica holds the change, so
    the kill loses none. The promoted replica has no replica of its own until
    the killed node is back: its shards answer 503 until then."""
    victim = next(n for n in cluster.masters() if f"redis://{n.address}" == stack.env["REDIS_URL"])

    def operate() -> tuple[set[int], float]:
        touched = shards_on(victim.slots)
        started = time.monotonic()
        cluster.kill(victim)
        cluster.restart(victim)
        return touched, time.monotonic() - started

    _, accounts, _, _ = run_scenario(
        "master SIGKILL, SEGMENTS_WAIT_REPLICAS=1", stack, cluster, operate
    )
    assert_nothing_lost(accounts)
