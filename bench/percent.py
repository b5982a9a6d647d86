"""Percent rollouts at scale: creating and deleting big segments, and what Redis
and the lookups felt meanwhile.

Registers users up to ``--percent-users`` known users (a phase of its own),
then through the API creates a 10% segment (the §5 target) and deletes it,
and with ``percent-100`` creates a 100% segment and deletes it. Each phase
reports its wall time; the slow log at 1 ms (reset before, read after, only
the entries of the connections of the bench's db, since the slow log is
server-wide), its script calls named; a lookup probe through the API and a
``PING`` probe on Redis, each every 2 ms, whose worst times say whether
lookups kept being served; and Redis memory after it (``used_memory`` minus
the history streams). The Redis settings changed here are put back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx
import redis
import redis.asyncio as aioredis

from bench import stores
from bench.context import expect
from bench.results import PercentPhase, PercentResult
from bench.seed import register_users
from segments_core.keys import Keyspace
from service.scripts import load_scripts

SLOWLOG = {"slowlog-log-slower-than": 1000, "slowlog-max-len": 100_000}
"""Server settings while measuring (microseconds, entries)."""
PROBE_PAUSE_S = 0.002
"""Pause between probe calls: ~500 probes/s, a small load next to the rollout."""
SCRIPT_COMMANDS = {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"}
PHASE_TIMEOUT_S = 900.0
"""Longest wait for one create or delete: minutes on a busy 2-core machine at 1M users."""


@contextlib.contextmanager
def slow_log(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url, decode_responses=True)
    saved = {k: client.config_get(k)[k] for k in SLOWLOG}
    try:
        for key, value in SLOWLOG.items():  # one by one: Redis 6.2 sets one a call
            client.config_set(key, value)
        yield client
    finally:
        for key, old in saved.items():
            client.config_set(key, old)
        client.close()


def clients_of_db(client: redis.Redis, db: int) -> set[str]:
    """Addresses of the connections currently using ``db`` (the service's, in the bench)."""
    return {str(c["addr"]) for c in client.client_list() if str(c.get("db")) == str(db)}


def _text(value: object) -> str:
    """redis-py gives the slow log's fields as bytes, even with ``decode_responses``."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def script_calls(
    entries: list[dict[str, object]], clients: set[str] | None, names: dict[str, str]
) -> list[tuple[float, str]]:
    """(ms, script name) of the slow log's script calls, of ``clients`` only if given;
    ``names``: sha -> script name."""
    calls = []
    for e in entries:
        if clients is not None and _text(e.get("client_address", "")) not in clients:
            continue
        words = _text(e.get("command", "")).split()
        if words and words[0].upper() in SCRIPT_COMMANDS:
            name = names.get(words[1], words[1][:12]) if len(words) > 1 else words[0]
            calls.append((float(str(e.get("duration", 0))) / 1000.0, name))
    return calls


async def _probe(call: Callable[[], Awaitable[object]], stop: asyncio.Event) -> list[float]:
    times: list[float] = []
    while not stop.is_set():
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
        await asyncio.sleep(PROBE_PAUSE_S)
    return times


def _ms(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else None


async def measure(
    http: httpx.AsyncClient,
    redis_url: str | None,
    keyspace: Keyspace,
    known_users: int,
    already_known: int,
    percents: tuple[int, ...],
    log: Callable[[str], None],
) -> PercentResult:
    """Phases: the registration, then create and delete a segment at each of ``percents``."""
    tag = int(time.time())
    phases: list[tuple[str, Callable[[], Awaitable[int | None]]]] = []

    async def register() -> int | None:
        await register_users(http, already_known + 1, known_users, log)
        return None

    def create(slug: str, percent: int) -> Callable[[], Awaitable[int | None]]:
        async def go() -> int | None:
            body = {"slug": slug, "percent": percent}
            resp = await http.post("/api/v1/segments", json=body, timeout=PHASE_TIMEOUT_S)
            expect(resp, f"create {slug}", 201)
            return int(resp.json().get("members", 0))

        return go

    def delete(slug: str) -> Callable[[], Awaitable[int | None]]:
        async def go() -> int | None:
            resp = await http.delete(f"/api/v1/segments/{slug}", timeout=PHASE_TIMEOUT_S)
            expect(resp, f"delete {slug}", 200, 204)
            return None

        return go

    if known_users > already_known:
        phases.append((f"register to {known_users:,} users", register))
    for percent in percents:
        slug = f"BENCH_PCT{percent}_{tag}"
        phases.append((f"create {percent}%", create(slug, percent)))
        phases.append((f"delete {percent}%", delete(slug)))

    names = {s.sha: name for name, s in load_scripts().items()}
    db = stores.redis_db(redis_url) if redis_url else 0
    ping = aioredis.Redis.from_url(redis_url) if redis_url else None
    rng = random.Random(7)

    def lookup_path() -> str:
        return f"/api/v1/users/{rng.randint(1, known_users)}/segments"

    out: list[PercentPhase] = []
    with slow_log(redis_url) if redis_url else contextlib.nullcontext() as client:
        for name, action in phases:
            ours = clients_of_db(client, db) if client else set()
            if client:
                client.slowlog_reset()
            stop = asyncio.Event()
            lookups = asyncio.create_task(_probe(lambda: http.get(lookup_path()), stop))
            pings = asyncio.create_task(_probe(ping.ping, stop)) if ping else None
            started = time.perf_counter()
            try:
                members = await action()
            finally:
                seconds = time.perf_counter() - started
                stop.set()
                looked = await lookups
                pinged = await pings if pings else []
            calls: list[tuple[float, str]] = []
            if client:
                ours |= clients_of_db(client, db)
                calls = script_calls(client.slowlog_get(SLOWLOG["slowlog-max-len"]), ours, names)
            longest = max(calls, default=None)
            out.append(
                PercentPhase(
                    name=name,
                    seconds=seconds,
                    members=members,
                    script_calls_over_1ms=len(calls) if client else None,
                    longest_script_ms=longest[0] if longest else None,
                    longest_script=longest[1] if longest else None,
                    probe_lookups=len(looked),
                    probe_lookup_p99_ms=_ms(looked, 0.99),
                    probe_lookup_max_ms=_ms(looked, 1.0),
                    probe_ping_max_ms=_ms(pinged, 1.0),
                    redis_bytes=await asyncio.to_thread(stores.state_bytes, redis_url, keyspace)
                    if redis_url
                    else None,
                )
            )
            log(f"{name}: {seconds:.2f} s" + (f", {members:,} members" if members else ""))
    if ping is not None:
        await ping.aclose()
    return PercentResult(known_users=known_users, phases=out)
