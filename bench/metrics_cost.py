"""What per-request metrics cost on the lookup hot path (issue 11: at most 5%).

Two measurements, each alternating metrics on (``SEGMENTS_REQUEST_METRICS=
true``, the default) and off in ABBA order (on, off, off, on, on, off, ...),
so that a drift of the machine falls on both sides alike:

- **in-process** (always): the whole app (``SegmentsApp``: request id,
  metrics, hot path, the Redis round trip) called directly, no HTTP, one
  lookup after the other: CPU time of this process per lookup. The metrics
  are CPU work, so this is their cost, and the fairest figure on a shared
  machine (waiting for Redis or for a core does not count). A strict one,
  too: uvicorn's own work per request is not in it, so the metrics' share is
  larger here than in a real server.
- **HTTP** (``--http``): the bench's lookup load (wrk, ``bench/lua/lookup.lua``,
  64 connections) against ``segments serve --workers 2``: throughput.

    .venv/bin/python -m bench.metrics_cost --redis-url redis://127.0.0.1:6379/11 [--http]

The Redis database is FLUSHED first and seeded (USERS users x 5 of 20
segments): give it one nobody else uses. ``--http`` needs wrk (see
``segments bench``). Exit code 1 when metrics cost more than 5%.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import redis

MODES = ("on", "off")
SEGMENTS = [f"BENCH_{i:02d}" for i in range(20)]
PER_USER = 5
TARGET = 0.95
"""Throughput with metrics / without, at least."""
SIGNING_KEY = "segments-bench-signing-key-0123456789"


class Run(msgspec.Struct, kw_only=True):
    metrics: str
    value: float


class Measurement(msgspec.Struct, kw_only=True):
    what: str
    unit: str
    runs: list[Run]
    median_on: float
    median_off: float
    throughput_on_vs_off: float
    """Throughput with metrics / without, the median over neighbouring pairs of
    runs: TARGET or more is the aim."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _order(pairs: int) -> list[str]:
    """on, off, off, on, on, off, ... (ABBA)."""
    out: list[str] = []
    for i in range(pairs):
        out += list(MODES) if i % 2 == 0 else list(reversed(MODES))
    return out


def _summary(what: str, unit: str, runs: list[Run], higher_is_better: bool) -> Measurement:
    """Medians, and the median of the ratios of neighbouring on/off runs (each pair
    of the ABBA order): a drift of the machine's load cancels out within a pair."""
    on = [r.value for r in runs if r.metrics == "on"]
    off = [r.value for r in runs if r.metrics == "off"]
    pairs = list(zip(on, off, strict=True))
    ratios = [a / b if higher_is_better else b / a for a, b in pairs]
    return Measurement(
        what=what,
        unit=unit,
        runs=runs,
        median_on=statistics.median(on),
        median_off=statistics.median(off),
        throughput_on_vs_off=statistics.median(ratios),
    )


# -- in process -----------------------------------------------------------------------------------


def _scope(method: str, path: str, body: bool = False) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"metrics-cost")]
    if body:
        headers.append((b"content-type", b"application/json"))
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {},
    }


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    """One request straight into the ASGI app; its status."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(method, path, bool(body)), receive, send)
    return status


async def _seed(app: Any, users: int) -> None:
    for slug in SEGMENTS:
        body = json.dumps({"slug": slug}).encode()
        assert await _call(app, "POST", "/api/v1/segments", body) in (201, 409)
    rng = random.Random(7)

    async def one(uid: int) -> None:
        body = json.dumps({"add": rng.sample(SEGMENTS, PER_USER)}).encode()
        assert await _call(app, "POST", f"/api/v1/users/{uid}/segments", body) == 200

    for start in range(1, users + 1, 200):
        await asyncio.gather(*(one(u) for u in range(start, min(start + 200, users + 1))))


async def _inprocess(redis_url: str, users: int, pairs: int, calls: int) -> Measurement:
    from service import metrics
    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(redis_url=redis_url, signing_key=SIGNING_KEY.encode()))
    rng = random.Random(11)
    async with app.lifespan():
        started = time.perf_counter()
        await _seed(app, users)
        _say(f"seeded {users:,} users x {PER_USER} memberships in "
             f"{time.perf_counter() - started:.1f} s")
        paths = [f"/api/v1/users/{rng.randint(1, users)}/segments" for _ in range(calls)]
        for path in paths[:2000]:  # warm up
            await _call(app, "GET", path)
        runs: list[Run] = []
        gc.collect()
        for mode in _order(pairs):
            # What SEGMENTS_REQUEST_METRICS sets; flipped in one app, one process,
            # so that both sides share everything else.
            metrics.REQUESTS.enabled = mode == "on"
            cpu = time.process_time()
            for path in paths:
                await _call(app, "GET", path)
            cpu_us = (time.process_time() - cpu) / calls * 1e6
            runs.append(Run(metrics=mode, value=cpu_us))
        metrics.REQUESTS.enabled = True
    return _summary("in-process lookup, CPU of the API process", "us per lookup", runs, False)


# -- HTTP ------------------------------------------------------------------------------------------


def _http(redis_url: str, users: int, pairs: int, duration_s: float, port: int) -> Measurement:
    from bench import services, wrk

    wrk_path = wrk.find_wrk()
    log_dir = Path(tempfile.mkdtemp(prefix="segments-metrics-cost-"))
    url = f"http://127.0.0.1:{port}"
    script = wrk.script_path("lookup")
    runs: list[Run] = []
    for mode in _order(pairs):
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env.update(REDIS_URL=redis_url, SEGMENTS_SIGNING_KEY=SIGNING_KEY,
                   SEGMENTS_REQUEST_METRICS="true" if mode == "on" else "false")
        env.pop("DATABASE_URL", None)
        services.port_free(port)
        api = services.start_api(env, port, 2, log_dir)
        try:
            load = {"users": users}
            wrk.run(wrk.command(wrk_path, url, script, duration_s=2, connections=64, threads=1,
                                args=load), 2)  # warm up
            run = wrk.run(wrk.command(wrk_path, url, script, duration_s=duration_s,
                                      connections=64, threads=1, args=load), duration_s)
        finally:
            api.stop()
        if run.output.errors.total:
            raise RuntimeError(f"{run.output.errors.total} errors during the run")
        _say(f"HTTP, metrics {mode:>3}: {run.rps:,.0f} req/s, p99 {run.percentile_ms('99'):.2f} ms")
        runs.append(Run(metrics=mode, value=run.rps))
    return _summary("HTTP lookup throughput, 2 workers, wrk 64 connections", "req/s", runs, True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--redis-url", required=True, help="a Redis db this run may flush")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--pairs", type=int, default=40, help="runs with metrics on, and as many off")
    p.add_argument("--calls", type=int, default=2_000, help="lookups per in-process run")
    p.add_argument("--http-pairs", type=int, default=3, help="HTTP runs on, and as many off")
    p.add_argument("--http", action="store_true", help="also under load over HTTP (wrk)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP run")
    p.add_argument("--port", type=int, default=8777)
    args = p.parse_args(argv)
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    client.close()
    found = [asyncio.run(_inprocess(args.redis_url, args.users, args.pairs, args.calls))]
    if args.http:
        found.append(
            _http(args.redis_url, args.users, args.http_pairs, args.duration, args.port)
        )
    for m in found:
        print(msgspec.json.encode(m).decode())
        _say(
            f"{m.what}: median on {m.median_on:,.1f}, off {m.median_off:,.1f} {m.unit};"
            f" throughput on/off {m.throughput_on_vs_off:.3f} (target >= {TARGET})"
        )
    return 0 if all(m.throughput_on_vs_off >= TARGET for m in found) else 1


if __name__ == "__main__":
    raise SystemExit(main())
