"""Creating a 10% segment over many known users, and what Redis felt meanwhile.

Three views of "did Redis block": the slow log (every command over 1 ms,
with its duration), the latency monitor (worst event over 1 ms), and two
probes running during the creation: a PING loop on its own Redis
connection and a lookup loop through the API. Redis settings changed for
the measurement are put back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator

import redis
import redis.asyncio as aioredis

from bench.httpclient import Connection, Target
from bench.results import PercentResult
from bench.seed import register_users
from bench.stores import redis_db

SLOWLOG_THRESHOLD_US = 1000
SLOWLOG_LEN = 4096
LATENCY_THRESHOLD_MS = 1
PROBE_PAUSE_S = 0.002
"""Pause between probe calls: ~500 probes/s, a small load next to the rollout."""
SCRIPT_COMMANDS = {b"EVAL", b"EVALSHA", b"EVAL_RO", b"EVALSHA_RO", b"FCALL", b"FCALL_RO"}
CREATE_TIMEOUT_S = 120.0


@contextlib.contextmanager
def redis_watch(url: str) -> Iterator[redis.Redis]:
    """Slow log at 1 ms and latency monitor at 1 ms, both reset; settings restored on exit."""
    client = redis.Redis.from_url(url)
    keys = ("slowlog-log-slower-than", "slowlog-max-len", "latency-monitor-threshold")
    saved = {k: client.config_get(k)[k] for k in keys}
    try:
        client.config_set("slowlog-log-slower-than", SLOWLOG_THRESHOLD_US)
        client.config_set("slowlog-max-len", SLOWLOG_LEN)
        client.config_set("latency-monitor-threshold", LATENCY_THRESHOLD_MS)
        client.slowlog_reset()
        client.latency_reset()
        yield client
    finally:
        for key, value in saved.items():
            if value is not None:
                client.config_set(key, value)
        client.close()


def clients_of_db(client: redis.Redis, db: int) -> set[str]:
    """Addresses of the connections currently using ``db`` (the service's, in the bench)."""
    return {str(c["addr"]) for c in client.client_list() if str(c.get("db")) == str(db)}


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def slowest(
    entries: list[dict[str, object]], clients: set[str] | None = None
) -> tuple[float | None, str | None]:
    """The longest script call of slow-log entries (ms), and a description of it.

    The slow log is server-wide: with ``clients``, only the entries of those
    connections count (other databases on the same Redis are not ours).
    """
    best: tuple[float, str] | None = None
    for e in entries:
        if clients is not None and _text(e.get("client_address", "")) not in clients:
            continue
        command = e.get("command", b"")
        raw = command if isinstance(command, bytes) else str(command).encode()
        name = raw.split(b" ", 1)[0].upper()
        if name not in SCRIPT_COMMANDS:
            continue
        ms = float(str(e.get("duration", 0))) / 1000.0
        if best is None or ms > best[0]:
            best = (ms, raw[:120].decode(errors="replace"))
    return (best[0], best[1]) if best else (None, None)


def latency_max_ms(client: redis.Redis) -> float | None:
    """Worst latency-monitor event since the reset (ms), over every event class."""
    rows = client.latency_latest() or []
    worst = [int(r[3]) for r in rows if len(r) >= 4]
    return float(max(worst)) if worst else None


async def _ping_probe(url: str, stop: asyncio.Event, out: list[float]) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            await client.ping()
            out.append(time.perf_counter() - t)
            await asyncio.sleep(PROBE_PAUSE_S)
    finally:
        await client.aclose()


async def _lookup_probe(
    target: Target, token: str | None, users: int, stop: asyncio.Event, out: list[float]
) -> None:
    conn = Connection(target, token)
    rng = random.Random(7)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            await conn.request("GET", f"/api/v1/users/{rng.randint(1, users)}/segments")
            out.append(time.perf_counter() - t)
            await asyncio.sleep(PROBE_PAUSE_S)
    finally:
        await conn.close()


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def measure(
    target: Target,
    token: str | None,
    redis_url: str | None,
    known_users: int,
    already_known: int,
    slug: str,
    log: Callable[[str], None],
) -> PercentResult:
    """Register users up to ``known_users``, then time creating ``slug`` at 10%."""
    register_s = 0.0
    if known_users > already_known:
        register_s = await register_users(target, token, already_known + 1, known_users, log)
    watch = redis_watch(redis_url) if redis_url else contextlib.nullcontext(None)
    db = redis_db(redis_url) if redis_url else 0
    with watch as client:
        ours = clients_of_db(client, db) if client is not None else set()
        stop = asyncio.Event()
        pings: list[float] = []
        lookups: list[float] = []
        probes = [asyncio.create_task(_lookup_probe(target, token, known_users, stop, lookups))]
        if redis_url:
            probes.append(asyncio.create_task(_ping_probe(redis_url, stop, pings)))
        await asyncio.sleep(0.2)
        conn = Connection(target, token)
        try:
            started = time.perf_counter()
            resp = await asyncio.wait_for(
                conn.json("POST", "/api/v1/segments", {"slug": slug, "percent": 10}),
                CREATE_TIMEOUT_S,
            )
            create_s = time.perf_counter() - started
            body = resp.json()
            if resp.status != 201 or not isinstance(body, dict):
                raise RuntimeError(f"create {slug}: HTTP {resp.status}: {resp.body[:300]!r}")
            members = int(body.get("members", 0))
        finally:
            stop.set()
            await asyncio.gather(*probes, return_exceptions=True)
            await conn.close()
        longest_ms: float | None = None
        longest: str | None = None
        entries = 0
        latency_ms: float | None = None
        if client is not None:
            ours |= clients_of_db(client, db)
            log_entries = client.slowlog_get(SLOWLOG_LEN)
            entries = sum(1 for e in log_entries if _text(e.get("client_address", "")) in ours)
            longest_ms, longest = slowest(log_entries, ours)
            latency_ms = latency_max_ms(client)
    log(f"10% segment over {known_users:,} users: {members:,} members in {create_s:.2f} s")
    return PercentResult(
        known_users=known_users,
        register_s=register_s,
        create_s=create_s,
        members=members,
        longest_script_ms=longest_ms,
        longest_command=longest,
        slowlog_checked=redis_url is not None,
        slowlog_entries=entries,
        probe_lookups=len(lookups),
        probe_lookup_max_ms=max(lookups) * 1000 if lookups else None,
        probe_lookup_p99_ms=(_p99(lookups) or 0.0) * 1000 if lookups else None,
        probe_ping_max_ms=max(pings) * 1000 if pings else None,
        latency_monitor_max_ms=latency_ms,
    )
