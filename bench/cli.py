"""``segments bench``: options, and the entry point ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from bench import profile, scenarios, services, stores, wrk
from bench.context import Options
from bench.httpclient import HttpError
from bench.runner import run
from bench.scenarios import LOAD, MEASUREMENTS

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/12"
"""db 12: 15 is the test suite's (README), so the two never wipe each other."""
DEFAULT_DATABASE_URL = "postgresql://127.0.0.1:5432/segments_bench"
DEFAULT_PORT = 8765
DEFAULT_WORKERS = 2
"""One uvicorn worker per core; wrk and Redis share the cores with them."""
DEFAULT_THREADS = 1
"""wrk threads: one event loop saturates 2 server workers at a fraction of a core."""
DEFAULT_OUT = Path(__file__).parent / "results"

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
    where.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of its own service")
    where.add_argument(
        "--workers", type=int, default=DEFAULT_WORKERS, help="API workers of its own service"
    )
    where.add_argument("--token", help="bearer token, when the service has SEGMENTS_TOKENS")

    load = p.add_argument_group("load")
    load.add_argument(
        "--scenarios",
        default=",".join(scenarios.DEFAULT),
        help="comma-separated names, or 'all' (default: all)",
    )
    load.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    load.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up load")
    load.add_argument("--connections", type=int, default=64, help="wrk connections")
    load.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="wrk threads")
    load.add_argument("--repeats", type=int, default=1, help="rounds of the scenario list")

    data = p.add_argument_group("data set")
    data.add_argument("--users", type=int, default=100_000, help="users seeded (ids 1..N)")
    data.add_argument("--memberships", type=int, default=5, help="memberships per user")
    data.add_argument("--segments", type=int, default=20, help="segments in the pool")
    data.add_argument(
        "--percent-users",
        type=int,
        default=1_000_000,
        help="known users when the 10%% segment is created",
    )
    data.add_argument("--zipf-exponent", type=float, default=1.0, help="skew of lookup-zipf")
    data.add_argument("--seed", type=int, default=1, help="random seed")
    data.add_argument(
        "--skip-seed", action="store_true", help="use the data already there (--url only)"
    )

    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of run folders")
    out.add_argument("--no-chart", action="store_true", help="no PNG")
    out.add_argument(
        "--profile",
        metavar="SCENARIOS",
        help="comma-separated: profile the API workers with py-spy during each one's first run"
        " (those runs are slowed a little: profile in a run of its own)",
    )
    return p


def options(args: argparse.Namespace) -> Options:
    names = scenarios.parse(args.scenarios)
    if args.url is None:
        redis_url = args.redis_url or os.environ.get("SEGMENTS_BENCH_REDIS_URL", DEFAULT_REDIS_URL)
        database_url = args.database_url or os.environ.get(
            "SEGMENTS_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL
        )
        if args.skip_seed:
            raise ValueError("--skip-seed needs --url: the bench wipes its own service's data")
    else:
        redis_url, database_url = args.redis_url, args.database_url
    for name, value, low in (
        ("--users", args.users, 1),
        ("--connections", args.connections, 1),
        ("--threads", args.threads, 1),
        ("--repeats", args.repeats, 1),
        ("--workers", args.workers, 1),
        ("--segments", args.segments, 3),
    ):
        if value < low:
            raise ValueError(f"{name} must be at least {low}")
    if not 1 <= args.memberships <= args.segments:
        raise ValueError("--memberships must be between 1 and --segments")
    if args.duration < 1:
        raise ValueError("--duration must be at least 1 second")
    profiled = [p.strip() for p in (args.profile or "").split(",") if p.strip()]
    if profiled:
        for name in profiled:
            if name not in LOAD or (name != "ceiling" and name not in names):
                raise ValueError(f"--profile: {name!r} is not a load scenario of --scenarios")
        if args.url is not None:
            raise ValueError("--profile needs the bench's own service (no --url)")
        profile.find_py_spy()
    return Options(
        url=args.url.rstrip("/") if args.url else None,
        redis_url=redis_url,
        database_url=database_url,
        force=args.force,
        port=args.port,
        workers=args.workers,
        scenarios=names,
        duration=args.duration,
        warmup=max(0.0, args.warmup),
        connections=args.connections,
        threads=args.threads,
        repeats=args.repeats,
        users=args.users,
        memberships=args.memberships,
        segments=args.segments,
        percent_users=args.percent_users,
        zipf_exponent=args.zipf_exponent,
        token=args.token,
        out=args.out,
        seed=args.seed,
        skip_seed=args.skip_seed,
        chart=not args.no_chart,
        profile=profiled,
    )


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opts = options(args)
        wrk.find_wrk()
    except (ValueError, wrk.WrkError, profile.ProfileError) as exc:
        print(f"segments bench: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(opts))
    except stores.NotOwned as exc:
        print(f"segments bench: {exc}", file=sys.stderr)
        return 2
    except (services.ServiceError, wrk.WrkError, HttpError, OSError, RuntimeError) as exc:
        print(f"segments bench: failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("segments bench: interrupted", file=sys.stderr)
        return 130
    return 0
