"""The client library's figures (issue 12): ``python -m bench.client``.

1. Cached lookups per second: ``Client(cache=True).segments(uid)`` in a loop,
   in this process pinned to one core, over ``--users`` users already in the
   cache (a few segments each, some with deadlines).
2. Feed lag under the change load: wrk runs the ``change`` scenario
   (``bench/lua/change.lua``) while a probe changes users of its own every
   ``PROBE_INTERVAL_S``; the lag of a probe is the time from the change's
   response to the cached client's feed thread applying its event (0 when
   the event came first). p50 / p99 / max over the probes.

The service (``segments serve``) runs as a child process on the same machine,
on the Redis of ``--redis-url`` / ``REDIS_URL`` (its data is added to:
segments ``BENCH_*``, users 1..N and probe users from 9,000,000,000).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import services, wrk

try:
    import segments_client  # noqa: F401
except ImportError:  # a checkout where client/ is not installed
    sys.path.insert(0, str(Path(__file__).parent.parent / "client" / "src"))

from segments_client import AddItem, Client, Conflict

SEGMENTS = 20
"""The pool of change.lua (BENCH_00 .. BENCH_19)."""
PROBE_BASE = 9_000_000_000
"""Probe users are PROBE_BASE + n: never drawn by the load."""
PROBE_SEGMENT = f"BENCH_PROBE_{os.getpid()}"
"""Of this run only: its adds are changes (events) on a Redis used before."""
PROBE_INTERVAL_S = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def seed(url: str, users: int) -> None:
    with Client(url, timeout=60) as api:
        for slug in [*(f"BENCH_{i:02d}" for i in range(SEGMENTS)), PROBE_SEGMENT]:
            with contextlib.suppress(Conflict):  # a second run on the same Redis
                api.create_segment(slug)
        for uid in range(1, users + 1):
            adds: list[Any] = [f"BENCH_{uid % SEGMENTS:02d}", f"BENCH_{(uid + 7) % SEGMENTS:02d}"]
            if uid % 4 == 0:
                adds.append(AddItem(f"BENCH_{(uid + 3) % SEGMENTS:02d}", ttl_seconds=3600))
            api.change(uid, add=adds)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > give_up:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def cached_lookups(url: str, users: int, seconds: float) -> dict[str, Any]:
    with Client(url, cache=True, max_entries=max(users, 1)) as client:
        wait_for(lambda: client.stats().feed_connected, "the feed")
        for _ in range(2):
            for uid in range(1, users + 1):
                client.segments(uid)
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(affinity)})  # one core (the feed thread idles)
        try:
            lookups = client.segments
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for uid in range(1, users + 1):
                    lookups(uid)
                done += users
            elapsed = time.perf_counter() - started
        finally:
            os.sched_setaffinity(0, affinity)
        stats = client.stats()
    return {
        "lookups_per_s": done / elapsed,
        "hit_ratio": stats.hits / max(1, stats.hits + stats.misses),
        "users": users,
    }


def feed_lag(url: str, users: int, seconds: float, connections: int) -> dict[str, Any]:
    seen: dict[int, float] = {}
    applied: dict[int, float] = {}
    """The change's own timestamp (the API's clock when the script ran), seconds."""
    with Client(url, cache=True, feed_idle_timeout=60) as client:
        handler = client._handler
        assert handler is not None
        apply = handler._message

        def spy(message: Any) -> None:
            apply(message)
            if message.event == "change" and PROBE_SEGMENT in message.data:
                now = time.time()
                data = json.loads(message.data)
                seen.setdefault(data["user_id"], now)
                stamp = data["timestamp"].replace("Z", "+00:00")
                applied[data["user_id"]] = datetime.fromisoformat(stamp).timestamp()

        handler._message = spy  # type: ignore[method-assign]
        wait_for(lambda: client.stats().feed_connected, "the feed")
        answered: dict[int, float] = {}
        stop = threading.Event()

        def probe() -> None:
            with Client(url, timeout=10) as writer:
                n = 0
                while not stop.is_set():
                    uid = PROBE_BASE + n
                    writer.change(uid, add=[PROBE_SEGMENT])
                    answered[uid] = time.time()
                    n += 1
                    stop.wait(PROBE_INTERVAL_S)

        prober = threading.Thread(target=probe, daemon=True)
        cmd = wrk.command(
            wrk.find_wrk(),
            url,
            wrk.script_path("change"),
            duration_s=seconds,
            connections=connections,
            threads=2,
            args={"users": users, "segments": SEGMENTS},
        )
        prober.start()
        try:
            load = wrk.run(cmd, seconds)
        finally:
            stop.set()
            prober.join()
        wait_for(lambda: set(answered) <= set(seen), "the last probes' events", 30)
        stats = client.stats()
    lags = sorted(max(0.0, seen[uid] - at) * 1000 for uid, at in answered.items())
    to_answer = sorted((at - applied[uid]) * 1000 for uid, at in answered.items())
    to_seen = sorted((seen[uid] - applied[uid]) * 1000 for uid in answered)
    return {
        "applied_to_answer_ms_p50": statistics.median(to_answer),
        "applied_to_answer_ms_p99": _p99(to_answer),
        "applied_to_seen_ms_p50": statistics.median(to_seen),
        "applied_to_seen_ms_p99": _p99(to_seen),
        "change_rps": load.rps,
        "change_errors": load.output.errors.total,
        "probes": len(lags),
        "lag_ms_p50": statistics.median(lags),
        "lag_ms_p99": _p99(lags),
        "lag_ms_max": lags[-1],
        "reconnects": stats.reconnects,
    }


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"), help="default: $REDIS_URL"
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("give --redis-url or set REDIS_URL (`segments dev` prints one)")
    with tempfile.TemporaryDirectory(prefix="segments-client-") as tmp:
        folder = Path(tmp)
        port = free_port()
        env = dict(os.environ, REDIS_URL=args.redis_url)
        env.setdefault("SEGMENTS_SIGNING_KEY", "segments-bench-signing-key-0123456789")
        api = services.start_api(env, port, args.workers, folder)
        url = f"http://127.0.0.1:{port}"
        try:
            seed(url, args.users)
            result = {
                "cached": cached_lookups(url, args.users, args.seconds),
                "lag": feed_lag(url, args.users, args.seconds, args.connections),
            }
        finally:
            api.stop()
    cached, lag = result["cached"], result["lag"]
    print(f"cached lookups: {cached['lookups_per_s']:,.0f}/s on one core"
          f" (hit ratio {cached['hit_ratio']:.3f}, {cached['users']:,} users)")
    print(f"feed lag under {lag['change_rps']:,.0f} changes/s: p50 {lag['lag_ms_p50']:.1f} ms,"
          f" p99 {lag['lag_ms_p99']:.1f} ms, max {lag['lag_ms_max']:.1f} ms"
          f" ({lag['probes']} probes, {lag['reconnects']} reconnects)")
    answer = (lag["applied_to_answer_ms_p50"], lag["applied_to_answer_ms_p99"])
    seen = (lag["applied_to_seen_ms_p50"], lag["applied_to_seen_ms_p99"])
    print(f"  from the change's own timestamp: to its answer p50 {answer[0]:.1f} / p99"
          f" {answer[1]:.1f} ms; to the cache p50 {seen[0]:.1f} / p99 {seen[1]:.1f} ms")
    print("BENCH_CLIENT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
