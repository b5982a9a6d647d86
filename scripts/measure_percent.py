"""Percent rollouts at scale: what creating and deleting big segments costs.

Registers N known users (``Store.register_users``, 10,000 a call), then
measures, each as one phase:

1. creating a 10% segment (about N/10 members),
2. deleting it,
3. creating a 100% segment (N members),
4. deleting that one,

and for each phase reports the wall time, the longest single script call in
Redis (slow log, filtered to this script's own connections), and the latency
of a lookup probe that runs meanwhile in its own process and connection
(the getMemberships script, three known users in four, one never seen).
Redis memory (``used_memory``) is reported before and after the
registration and after each phase, with the history streams' share (no
archiver trims them here) given apart.

    .venv/bin/python scripts/measure_percent.py redis://127.0.0.1:6379/14
    .venv/bin/python scripts/measure_percent.py --private      # own redis-server

The database of the URL is flushed (FLUSHDB, that index only) before and
after the run. The slow log threshold and length are server-wide settings:
they are put back as they were at the end.

Settings to compare (monkeypatched here only, for evidence): ``--scan-count``
sets ``ROLLOUT_SCAN_COUNT`` and ``PURGE_SCAN_COUNT`` (users per script call);
``--shard-concurrency`` bounds how many shards a rollout or purge works on
at once (the service runs all 16 at once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from segments_core import keys
from service import store as store_module
from service.store import Store

CLIENT_NAME = "measure_percent"
PROBE_NAME = "measure_percent_probe"


# --- lookup probe (own process: a thread would measure the GIL) ----------------


def probe_main(
    url: str, sha: str, source: str, known: int, started: Any, stop: Any, out: Any
) -> None:
    rng = random.Random(5)
    fresh = 10**15  # never-seen ids, far from the registered ones
    latencies: list[float] = []
    client = redis.Redis.from_url(url, decode_responses=True, client_name=PROBE_NAME)
    try:
        client.script_load(source)
        started.set()
        while not stop.is_set():
            if rng.random() < 0.75:
                uid = rng.randint(1, known)
            else:
                fresh += 1
                uid = fresh
            k = keys.Keyspace().for_user(uid)
            args = [k.user(uid), k.users, k.seg_slug, k.seg_pct, k.counts, k.events]
            t0 = time.perf_counter()
            client.evalsha(sha, len(args), *args, uid, int(time.time() * 1000))
            latencies.append(time.perf_counter() - t0)
        out.put(latencies)
    finally:
        client.close()


class Probe:
    def __init__(self, url: str, store: Store, known: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        script = store.scripts["getMemberships"]
        self.started, self.stop, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.process = ctx.Process(
            target=probe_main,
            args=(url, script.sha, script.source, known, self.started, self.stop, self.out),
            daemon=True,
        )

    def __enter__(self) -> Probe:
        self.process.start()
        if not self.started.wait(60):
            raise RuntimeError("the lookup probe did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.latencies: list[float] = self.out.get(timeout=60)
        self.process.join(10)


def latency_summary(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"count": 0}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e3, 2)

    return {
        "count": len(ordered),
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1] * 1e3, 2),
        "over_50ms": sum(1 for x in ordered if x > 0.050),
    }


# --- Redis-side views ---------------------------------------------------------


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class SlowLog:
    """Server-wide slow log at a threshold; entries of our own connections only."""

    def __init__(self, client: redis.Redis, threshold_us: int, names: dict[str, str]) -> None:
        self.client = client
        self.threshold_us = threshold_us
        self.names = names  # sha -> script name
        self.saved = {
            k: client.config_get(k)[k] for k in ("slowlog-log-slower-than", "slowlog-max-len")
        }
        client.config_set("slowlog-log-slower-than", threshold_us)
        client.config_set("slowlog-max-len", 100_000)

    def reset(self) -> None:
        self.client.slowlog_reset()

    def read(self) -> dict[str, Any]:
        by_script: dict[str, list[int]] = defaultdict(list)
        for entry in self.client.slowlog_get(100_000):
            if _text(entry.get("client_name")) != CLIENT_NAME:
                continue
            words = _text(entry["command"]).split()
            name = words[0].upper()
            if name in ("EVALSHA", "EVAL") and len(words) > 1:
                name = self.names.get(words[1], words[1][:12])
            by_script[name].append(int(entry["duration"]))
        return {
            name: {
                f"calls_over_{self.threshold_us / 1000:g}ms": len(d),
                "max_ms": round(max(d) / 1000, 2),
                "mean_ms": round(statistics.fmean(d) / 1000, 2),
            }
            for name, d in sorted(by_script.items())
        }

    def restore(self) -> None:
        for key, value in self.saved.items():
            self.client.config_set(key, value)


def memory(client: redis.Redis) -> dict[str, int]:
    used = int(client.info("memory")["used_memory"])
    streams = 0
    entries = 0
    for key in keys.Keyspace().history_streams():
        if client.exists(key):
            streams += int(client.memory_usage(key, samples=0) or 0)
            entries += int(client.xlen(key))
    return {"used_memory": used, "streams_bytes": streams, "stream_entries": entries}


# --- settings to compare ----------------------------------------------------------


def limit_shard_concurrency(n: int) -> None:
    """At most ``n`` shards of one rollout or purge in flight at once."""
    semaphores: dict[int, asyncio.Semaphore] = {}

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def limited(self: Store, *args: Any) -> Any:
            sem = semaphores.setdefault(id(method), asyncio.Semaphore(n))
            async with sem:
                return await method(self, *args)

        return limited

    Store._rollout_shard = wrap(Store._rollout_shard)  # type: ignore[method-assign]
    Store._purge_shard = wrap(Store._purge_shard)  # type: ignore[method-assign]


# --- the run ------------------------------------------------------------------------


async def run(url: str, n_users: int, slowlog_us: int, keep: bool) -> dict[str, Any]:
    sync = redis.Redis.from_url(url, decode_responses=True)
    aio = aioredis.Redis.from_url(url, decode_responses=True, client_name=CLIENT_NAME)
    store = Store(aio)
    names = {s.sha: name for name, s in store.scripts.items()}
    sync.flushdb(asynchronous=True)
    report: dict[str, Any] = {
        "url": url,
        "redis_version": sync.info("server")["redis_version"],
        "users": n_users,
        "rollout_scan_count": store_module.ROLLOUT_SCAN_COUNT,
        "purge_scan_count": store_module.PURGE_SCAN_COUNT,
        "memory": {"empty": memory(sync)},
        "phases": {},
    }
    slowlog = SlowLog(sync, slowlog_us, names)
    try:
        t0 = time.perf_counter()
        batch = 10_000
        for start in range(1, n_users + 1, batch):
            await store.register_users(range(start, min(start + batch, n_users + 1)))
        report["register_s"] = round(time.perf_counter() - t0, 2)
        report["memory"]["registered"] = memory(sync)

        async def phase(name: str, action: Callable[[], Awaitable[Any]]) -> None:
            slowlog.reset()
            with Probe(url, store, n_users) as probe:
                t = time.perf_counter()
                result = await action()
                wall = time.perf_counter() - t
            entry: dict[str, Any] = {
                "wall_s": round(wall, 2),
                "script_calls_in_redis": slowlog.read(),
                "lookup_probe": latency_summary(probe.latencies),
            }
            if result is not None:
                entry["members"] = result.members
            report["phases"][name] = entry
            report["memory"][f"after {name}"] = memory(sync)
            print(f"{name}: {json.dumps(entry)}", file=sys.stderr)

        await phase("create 10%", lambda: store.create_segment("MEASURE_10", "", 1000))
        await phase("delete 10%", lambda: store.delete_segment("MEASURE_10"))
        await phase("create 100%", lambda: store.create_segment("MEASURE_100", "", 10_000))
        await phase("delete 100%", lambda: store.delete_segment("MEASURE_100"))
    finally:
        slowlog.restore()
        if not keep:
            sync.flushdb(asynchronous=True)
        sync.close()
        await aio.aclose()

    mem = report["memory"]

    def state(m: dict[str, int]) -> int:
        return m["used_memory"] - m["streams_bytes"]

    report["derived"] = {
        "bytes_per_known_user": round((state(mem["registered"]) - state(mem["empty"])) / n_users),
        "bytes_per_membership_100pct": round(
            (state(mem["after create 100%"]) - state(mem["after delete 10%"])) / n_users
        ),
        "stream_bytes_per_event": round(
            mem["after create 100%"]["streams_bytes"]
            / max(1, mem["after create 100%"]["stream_entries"])
        ),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--private", action="store_true", help="start an own redis-server")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--scan-count", type=int, help="users per rollout / purge call")
    parser.add_argument("--shard-concurrency", type=int, help="shards in flight at once")
    parser.add_argument("--slowlog-us", type=int, default=1000, help="slow log threshold")
    parser.add_argument("--keep", action="store_true", help="do not flush the db at the end")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()

    if args.scan_count:
        store_module.ROLLOUT_SCAN_COUNT = args.scan_count
        store_module.PURGE_SCAN_COUNT = args.scan_count
    if args.shard_concurrency:
        limit_shard_concurrency(args.shard_concurrency)

    if args.private:
        from segments_dev.embedded import EmbeddedRedis

        with (
            tempfile.TemporaryDirectory(prefix="measure-percent-") as tmp,
            EmbeddedRedis(tmp) as server,
        ):
            report = asyncio.run(run(server.url, args.users, args.slowlog_us, args.keep))
    else:
        if not urlsplit(args.url).path.strip("/"):
            parser.error("name the database index in the URL (it is flushed): .../14")
        report = asyncio.run(run(args.url, args.users, args.slowlog_us, args.keep))
    report["shard_concurrency"] = args.shard_concurrency or store_module.BULK_SHARDS_IN_FLIGHT
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
