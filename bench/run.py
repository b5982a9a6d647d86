"""One bench run from start to end: prepare, seed, measure, report.

Order (own service): wipe the bench's Redis db and PostgreSQL database,
migrate, start the API; seed (archiver stopped, so the seeding's events wait
in the streams); start the archiver and time it draining them; Redis memory
per membership; the percent rollouts; the load scenarios, interleaved with
the ceiling (``bench.loadrun``); the hot path in-process; the CSV report. With
``--url`` the service is someone else's: no wiping, no starting, and only what
can be seen from outside.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path

import httpx
import psutil
import redis.asyncio as aioredis

from bench import archiving, csv_rate, hotpath, percent, seed, services, stores
from bench.chart import write_png
from bench.context import Context, Options, http_client
from bench.loadrun import load_runs, settle
from bench.machine import machine_info, process_groups
from bench.results import MemoryResult, Report, write_json
from bench.table import tables
from bench.targets import checks
from segments_core.keys import load_keyspace

DRAIN_TIMEOUT_S = 600.0
"""Longest wait for the archiver to drain the seeding's backlog."""
QUIET_BUSY_PERCENT = 20.0
"""Machine-wide CPU use, over one second before the run, above which the bench warns."""
TRIM_WAIT_S = 2.5
"""After a drain, time for the archiver to trim the streams (it trims each second)."""


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def prepare_own_service(ctx: Context) -> dict[str, str]:
    opts = ctx.opts
    assert opts.redis_url and opts.database_url
    if not services.port_free(opts.port):
        raise services.ServiceError(f"port {opts.port} is in use; choose another with --port")
    _say(
        f"WIPING Redis db {stores.redis_db(opts.redis_url)} ({opts.redis_url}) and PostgreSQL "
        f"database {stores.pg_dbname(opts.database_url)!r}: the bench owns them"
    )
    if dropped := stores.claim_redis(opts.redis_url, opts.force):
        _say(f"flushed {dropped} keys")
    if stores.claim_postgres(opts.database_url, opts.force):
        _say(f"created database {stores.pg_dbname(opts.database_url)!r}")
    env = services.service_env(opts.redis_url, opts.database_url, opts.shards)
    services.migrate(env, ctx.run_dir)
    ctx.log(f"starting the API: {opts.workers} workers on 127.0.0.1:{opts.port}")
    ctx.api = services.start_api(env, opts.port, opts.workers, ctx.run_dir)
    return env


async def seed_and_drain(ctx: Context, report: Report, env: dict[str, str] | None) -> None:
    opts = ctx.opts
    url = opts.redis_url
    readings: list[tuple[int, int]] = []  # (used_memory, stream bytes) before the memberships

    async def baseline() -> None:
        if url:
            readings.append(await asyncio.to_thread(stores.memory, url, ctx.keyspace))

    empty = stores.memory(url, ctx.keyspace)[0] if url else 0
    assert url, "options: seeding needs the Redis of the deployment"
    ctx.log(f"seeding {opts.users:,} users x {opts.memberships} memberships")
    report.seed = await seed.seed(
        ctx.http,
        url,
        ctx.keyspace,
        opts.users,
        opts.memberships,
        opts.segments,
        opts.seed,
        ctx.log,
        baseline,
    )
    if env is not None and ctx.redis is not None and opts.database_url:
        ctx.log("starting the archiver on the seeding's backlog")
        ctx.archiver = services.start_archiver(env, ctx.run_dir)
        ctx.groups = process_groups(ctx)
        report.archiver = drained = await archiving.measure_drain(
            ctx.redis, ctx.keyspace, opts.database_url, DRAIN_TIMEOUT_S, ctx.log
        )
        ctx.log(f"archiver: {drained.events_per_s:,.0f} events/s ({drained.events:,} rows)")
        await asyncio.sleep(TRIM_WAIT_S)
    if url and readings and (members := report.seed.memberships):
        (used_before, streams_before) = readings[0]
        used_after, streams_after = stores.memory(url, ctx.keyspace)
        report.memory = m = MemoryResult(
            used_empty=empty,
            used_before=used_before,
            used_after=used_after,
            stream_bytes_before=streams_before,
            stream_bytes_after=streams_after,
            memberships=members,
            users=opts.users,
            bytes_per_membership=(used_after - streams_after - used_before + streams_before)
            / members,
            data_set_bytes_per_membership=(used_after - empty - streams_after) / members,
        )
        ctx.log(
            f"Redis: {m.bytes_per_membership:.1f} bytes per membership, "
            f"{m.data_set_bytes_per_membership:.1f} with the users registry"
        )


async def optional(
    ctx: Context, report: Report, name: str, step: Coroutine[object, object, object]
) -> None:
    """Run one measurement; its failure is noted in the report, the run goes on."""
    try:
        await step
    except (OSError, RuntimeError, ValueError, TimeoutError, httpx.HTTPError) as exc:
        message = f"{name} failed: {type(exc).__name__}: {exc}"
        ctx.log(message)
        report.notes.append(message)


async def measurements(ctx: Context, report: Report) -> None:
    opts = ctx.opts
    percents = tuple(
        p for p, name in ((10, "percent"), (100, "percent-100")) if name in opts.scenarios
    )
    if percents:

        async def percent_step() -> None:
            known = max(opts.percent_users, opts.users)
            report.percent = await percent.measure(
                ctx.http, opts.redis_url, ctx.keyspace, known, opts.users, percents, ctx.log
            )

        await optional(ctx, report, "percent", percent_step())
    await load_runs(ctx, report)
    if "hotpath" in opts.scenarios and opts.redis_url:

        async def hotpath_step() -> None:
            await settle(ctx)
            report.hotpath = h = await hotpath.measure(
                opts.redis_url or "", ctx.keyspace, opts.users
            )
            ctx.log(f"hot path in-process: p50 {h.p50_us:.0f} us, p99 {h.p99_us:.0f} us")

        await optional(ctx, report, "hotpath", hotpath_step())
    if "csv" in opts.scenarios:

        async def csv_step() -> None:
            await settle(ctx)
            report.csv = await csv_rate.measure(ctx.http, ctx.groups.get("api"), ctx.log)

        await optional(ctx, report, "csv", csv_step())


def finish(ctx: Context, report: Report) -> Path:
    report.finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report.checks = checks(report)
    path = write_json(report, ctx.run_dir / "bench.json")
    print(tables(report), flush=True)
    _say(f"report: {path}")
    if not ctx.opts.no_chart and report.scenarios:
        try:
            _say(f"chart:  {write_png(report, ctx.run_dir / 'bench.png')}")
        except ImportError:
            _say("no chart: matplotlib is not installed (pip install 'segments[bench]')")
    return path


async def run(opts: Options) -> Report:
    started = dt.datetime.now(dt.UTC)
    run_dir = opts.out / started.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {message}", flush=True)

    http = http_client(opts.url or f"http://127.0.0.1:{opts.port}", opts.token)
    ctx = Context(opts=opts, run_dir=run_dir, http=http, log=log)
    if (busy := psutil.cpu_percent(interval=1.0)) > QUIET_BUSY_PERCENT:
        _say(
            f"warning: the machine is {busy:.0f}% busy before the run; other work skews the "
            "figures (see the 'cpu other %' column)"
        )
    report = Report(
        started_at=started.isoformat(timespec="seconds"),
        machine=machine_info(opts, busy),
        settings=opts.settings(),
    )
    env: dict[str, str] | None = None
    if main := asyncio.current_task():  # SIGTERM: unwind through the finally below
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        if opts.own_service:
            env = prepare_own_service(ctx)
        if opts.redis_url:
            ctx.redis = aioredis.Redis.from_url(opts.redis_url)
            ctx.keyspace = await load_keyspace(ctx.redis)  # the running service set it
            report.settings["shards"] = ctx.keyspace.shards
        ctx.groups = process_groups(ctx)
        if not opts.skip_seed:
            await seed_and_drain(ctx, report, env)
        await measurements(ctx, report)
    finally:
        for child in (ctx.archiver, ctx.api):
            if child is not None:
                child.stop()
        if ctx.redis is not None:
            await ctx.redis.aclose()
        await http.aclose()
    finish(ctx, report)
    return report
