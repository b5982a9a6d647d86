"""Measurements behind docs/cluster.md (not tests: figures, printed as Markdown).

``python -m tests.support.measure_cluster wait [--calls N]``
    What ``SEGMENTS_WAIT_REPLICAS=1`` costs: membership changes through the
    service's store on a 3-master cluster with a replica each, one at a time
    and 64 at once, without and with the wait.

``python -m tests.support.measure_cluster migration [--users N] [--batch K] --pg-server-url URL``
    A big shard moved under load: the failover tests' harness (API and
    archiver as processes, a steady stream of changes and lookups), N known
    users all in a 100% segment (so every user has a key), then shard 3's slot
    migrated K keys per MIGRATE; the figures as the failover tests print them.

``python -m tests.support.measure_cluster shards [--users N] [--counts 16,64,256]``
    The number of logical shards: for each count, a new deployment on a
    private single Redis (the machine's redis-server), N known users, then a
    10% segment created, lookups timed, a 100% segment (N members) created
    and deleted, and Redis's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis

from segments_core.keys import Keyspace
from segments_core.redis_client import connect
from segments_dev.embedded import free_port
from service.store import AddItem, Store
from tests.support.cluster import RedisClusterServers


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def _timed(calls: list[Callable[[], Awaitable[Any]]], concurrency: int) -> list[float]:
    times: list[float] = []
    queue = list(reversed(calls))

    async def worker() -> None:
        while queue:
            call = queue.pop()
            started = time.perf_counter()
            await call()
            times.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return times


async def measure_wait(calls: int) -> None:
    print("| replicas waited for | concurrency | median ms | p99 ms | changes/s |")
    print("|---|---|---|---|---|")
    with RedisClusterServers() as cluster:
        for wait in (0, 1):
            client = await connect(cluster.url, wait_replicas=wait)
            try:
                store = Store(client)
                await store.create_segment("W", "", 0)
                for concurrency in (1, 64):

                    def change(n: int, store: Store = store) -> Callable[[], Awaitable[Any]]:
                        uid = 1 + n % 5_000
                        if (n // 5_000) % 2:
                            return lambda: store.change_user_segments(uid, [], ["W"])
                        return lambda: store.change_user_segments(uid, [AddItem("W", 0)], [])

                    started = time.perf_counter()
                    times = await _timed([change(n) for n in range(calls)], concurrency)
                    elapsed = time.perf_counter() - started
                    times.sort()
                    print(
                        f"| {wait} | {concurrency} | {_ms(statistics.median(times))}"
                        f" | {_ms(times[int(len(times) * 0.99)])} | {calls / elapsed:,.0f} |"
                    )
                cluster.flush()
            finally:
                await client.aclose()


class PrivateRedis:
    """The machine's redis-server (no persistence) on a free port, for one measurement."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="segments-measure-"))
        self.port = free_port()
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        for _ in range(200):
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


async def measure_shards(users: int, counts: list[int]) -> None:
    print(
        "| shards | register users s | 10% segment created s | lookup median / p99 ms"
        " | 100% segment created s | deleted s | memory MB (all) | bytes per membership |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for shards in counts:
        server = PrivateRedis()
        try:
            client = await connect(server.url)
            store = Store(client, keyspace=Keyspace(shards))
            started = time.perf_counter()
            batch = 10_000
            for low in range(1, users + 1, batch):
                await store.register_users(range(low, min(low + batch, users + 1)))
            registered = time.perf_counter() - started
            started = time.perf_counter()
            await store.create_segment("TEN", "", 1_000)
            ten = time.perf_counter() - started
            lookups = await _timed(
                [
                    lambda u=u, store=store: store.user_segments(u)
                    for u in range(1, users, users // 2_000)
                ],
                1,
            )
            lookups.sort()
            base = int(redis.Redis.from_url(server.url).info("memory")["used_memory"])
            started = time.perf_counter()
            await store.create_segment("ALL", "", 10_000)
            everyone = time.perf_counter() - started
            full = int(redis.Redis.from_url(server.url).info("memory")["used_memory"])
            started = time.perf_counter()
            await store.delete_segment("ALL")
            deleted = time.perf_counter() - started
            per_membership = (full - base) / users
            print(
                f"| {shards} | {registered:.1f} | {ten:.1f}"
                f" | {_ms(statistics.median(lookups))} / {_ms(lookups[int(len(lookups) * 0.99)])}"
                f" | {everyone:.1f} | {deleted:.1f} | {full / 1e6:.0f}"
                f" | {per_membership:.0f} |"
            )
            await client.aclose()
        finally:
            server.stop()


def measure_migration(users: int, batch: int, pg_server_url: str) -> None:
    import httpx
    from redis.crc import key_slot

    from segments_dev.embedded import create_database, drop_database, random_database_name
    from tests.support import SHARD_KEYS
    from tests.support.failover import (
        SLUGS,
        Load,
        Stack,
        account,
        figures,
        shards_on,
        wait_archived,
    )
    from tests.support.history import prepare_database

    name = random_database_name()
    database_url = prepare_database(create_database(pg_server_url, name))
    try:
        with (
            RedisClusterServers(full_coverage=False) as cluster,
            tempfile.TemporaryDirectory() as folder,
            Stack(cluster.url, database_url, Path(folder)) as stack,
        ):
            with httpx.Client(base_url=stack.url, timeout=120) as http:
                for slug in SLUGS:
                    http.post("/api/v1/segments", json={"slug": slug}).raise_for_status()
                first = 100_000
                for low in range(first, first + users, 10_000):
                    ids = list(range(low, min(low + 10_000, first + users)))
                    http.post("/api/v1/users", json={"user_ids": ids}).raise_for_status()
                body = {"slug": "EVERYONE", "percent": 100}
                http.post("/api/v1/segments", json=body).raise_for_status()
            asyncio.run(wait_archived(cluster.url))
            slot = key_slot(SHARD_KEYS[3].tag.encode())
            load = Load(stack.url).start()
            load.wait_for(300)
            started = time.monotonic()
            moved = cluster.migrate_slot(slot, batch=batch)
            took = time.monotonic() - started
            load.wait_for(300)
            outcomes = load.stop()
            stack.assert_running()
            asyncio.run(wait_archived(cluster.url))
            accounts = account(stack.url, database_url, outcomes)
            fig = figures(
                f"migration of {moved} keys, {batch} per MIGRATE",
                outcomes,
                shards_on([slot]),
                started,
                took,
            )
            fig.acknowledged, fig.lost = accounts.acknowledged, len(accounts.lost)
            print(fig.line())
            print(
                f"in state only: {len(accounts.state_only)}, in history only:"
                f" {len(accounts.history_only)}, duplicates: {len(accounts.duplicates)}"
            )
    finally:
        drop_database(pg_server_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    wait = sub.add_parser("wait")
    wait.add_argument("--calls", type=int, default=4_000)
    migration = sub.add_parser("migration")
    migration.add_argument("--users", type=int, default=160_000)
    migration.add_argument("--batch", type=int, default=1_000)
    migration.add_argument("--pg-server-url", required=True)
    shards = sub.add_parser("shards")
    shards.add_argument("--users", type=int, default=1_000_000)
    shards.add_argument("--counts", default="16,64,256")
    args = parser.parse_args()
    if args.what == "wait":
        asyncio.run(measure_wait(args.calls))
    elif args.what == "migration":
        measure_migration(args.users, args.batch, args.pg_server_url)
    else:
        asyncio.run(measure_shards(args.users, [int(c) for c in args.counts.split(",")]))


if __name__ == "__main__":
    main()
