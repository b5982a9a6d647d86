"""``segments bench``: options, and the entry point ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import httpx

from bench import profile, scenarios, services, stores, wrk
from bench.context import Options
from bench.scenarios import LOAD, MEASUREMENTS
from segments_core.keys import MAX_SHARDS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
"""db 12: 15 is the test suite's (README), so the two never wipe each other."""
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/segments_bench"

EPILOG = f"""\
scenarios (ceiling, GET /healthz, always runs between the others):
{chr(10).join(f"  {s.name:<13} {s.description}" for s in LOAD.values() if s.name != "ceiling")}
{chr(10).join(f"  {name:<13} {text}" for name, text in MEASUREMENTS.items())}

By default the bench starts its own service (`segments serve` and `segments
archiver`) against a Redis db and a PostgreSQL database it OWNS AND WIPES:
--redis-url (default $SEGMENTS_BENCH_REDIS_URL or {DEFAULT_REDIS_URL})
and --database-url (default $SEGMENTS_BENCH_DATABASE_URL or
{DEFAULT_DATABASE_URL}, created if missing). It refuses to wipe
one that holds data it did not write, unless --force.

With --url it drives a running service instead, wiping nothing; give
--redis-url / --database-url as well for Redis memory, archiver lag and
the slow log.

Load comes from wrk ({wrk.INSTALL_HINT.split(": ", 1)[1]})
"""


def build_parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="segments bench",
        description="Load benchmark of Segments (SPEC section 5).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("what to run against")
    where.add_argument("--url", help="a running service (default: start one)")
    where.add_argument("--redis-url", help="the bench's Redis db (see below)")
    where.add_argument("--database-url", help="the bench's PostgreSQL database (see below)")
    where.add_argument("--force", action="store_true", help="wipe stores holding other data")
    where.add_argument("--port", type=int, default=d.port, help="port of its own service")
    where.add_argument("--workers", type=int, default=d.workers, help="API workers of its own")
    where.add_argument(
        "--shards", type=int, help="logical shards of its own deployment (SEGMENTS_SHARDS)"
    )
    where.add_argument("--token", help="bearer token, when the service has SEGMENTS_TOKENS")

    load = p.add_argument_group("load")
    load.add_argument(
        "--scenarios", default=",".join(d.scenarios), help="comma-separated names, or 'all'"
    )
    load.add_argument("--duration", type=float, default=d.duration, help="seconds per wrk run")
    load.add_argument("--warmup", type=float, default=d.warmup, help="seconds of warm-up load")
    load.add_argument("--connections", type=int, default=d.connections, help="wrk connections")
    load.add_argument("--threads", type=int, default=d.threads, help="wrk threads")
    load.add_argument("--repeats", type=int, default=d.repeats, help="rounds of the scenarios")

    data = p.add_argument_group("data set")
    data.add_argument("--users", type=int, default=d.users, help="users seeded (ids 1..N)")
    data.add_argument("--memberships", type=int, default=d.memberships, help="per user")
    data.add_argument("--segments", type=int, default=d.segments, help="segments in the pool")
    data.add_argument(
        "--percent-users", type=int, default=d.percent_users, help="known users for `percent`"
    )
    data.add_argument(
        "--zipf-exponent", type=float, default=d.zipf_exponent, help="skew of lookup-zipf"
    )
    data.add_argument("--seed", type=int, default=d.seed, help="random seed")
    data.add_argument("--skip-seed", action="store_true", help="use the data there (--url only)")

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=d.out, help="folder of run folders")
    out.add_argument("--no-chart", action="store_true", help="no PNG")
    out.add_argument(
        "--profile",
        metavar="SCENARIOS",
        help="comma-separated: py-spy the API workers during each one's first run"
        " (those runs are slowed a little: profile in a run of its own)",
    )
    out.add_argument(
        "--show", type=Path, metavar="BENCH_JSON", help="print a saved report as Markdown, exit"
    )
    return p


def options(args: argparse.Namespace) -> Options:
    given = {k: v for k, v in vars(args).items() if k != "show"}
    given["scenarios"] = names = scenarios.parse(args.scenarios)
    given["profile"] = profiled = [p.strip() for p in (args.profile or "").split(",") if p.strip()]
    if args.url is None:
        given["redis_url"] = args.redis_url or os.environ.get(
            "SEGMENTS_BENCH_REDIS_URL", DEFAULT_REDIS_URL
        )
        given["database_url"] = args.database_url or os.environ.get(
            "SEGMENTS_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL
        )
        if args.skip_seed:
            raise ValueError("--skip-seed needs --url: the bench wipes its own service's data")
    else:
        given["url"] = args.url.rstrip("/")
        if args.shards is not None:
            raise ValueError("--shards sets up the bench's own deployment (no --url)")
        if not args.skip_seed and args.redis_url is None:
            raise ValueError("seeding writes through the service's store: give --redis-url")
    for name, low in (
        ("users", 1),
        ("connections", 1),
        ("threads", 1),
        ("repeats", 1),
        ("workers", 1),
        ("segments", 3),
    ):
        if given[name] < low:
            raise ValueError(f"--{name} must be at least {low}")
    if args.shards is not None and not 1 <= args.shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be from 1 to {MAX_SHARDS}")
    if not 1 <= args.memberships <= args.segments:
        raise ValueError("--memberships must be between 1 and --segments")
    if args.duration < 1:
        raise ValueError("--duration must be at least 1 second")
    given["warmup"] = max(0.0, args.warmup)
    for name in profiled:
        if name not in LOAD or (name != "ceiling" and name not in names):
            raise ValueError(f"--profile: {name!r} is not a load scenario of --scenarios")
    if profiled:
        if args.url is not None:
            raise ValueError("--profile needs the bench's own service (no --url)")
        profile.find_py_spy()
    return Options(**given)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.show is not None:
        from bench.results import read_json
        from bench.table import tables

        print(tables(read_json(args.show), markdown=True))
        return 0
    try:
        opts = options(args)
        wrk.find_wrk()
    except (ValueError, wrk.WrkError, profile.ProfileError) as exc:
        print(f"segments bench: {exc}", file=sys.stderr)
        return 2
    from bench.run import run

    try:
        asyncio.run(run(opts))
    except stores.NotOwned as exc:
        print(f"segments bench: {exc}", file=sys.stderr)
        return 2
    except (services.ServiceError, wrk.WrkError, httpx.HTTPError, OSError, RuntimeError) as exc:
        print(f"segments bench: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("segments bench: interrupted", file=sys.stderr)
        return 130
    return 0
