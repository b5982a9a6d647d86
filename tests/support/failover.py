"""Failovers under load: the service running for real, a steady stream of
changes and lookups, and the accounts afterwards.

- :class:`Stack`: ``segments serve`` and ``segments archiver`` as child
  processes on a cluster and a PostgreSQL database (their logs in files).
- :class:`Load`: writers and readers over HTTP from a thread of the test
  process. Each writer owns its users and walks each through a fixed plan
  over :data:`SLUGS`: add every slug in turn, then remove each in turn, so a
  (user, slug) pair sees at most one add and one remove, and what an
  acknowledged change must have left behind is known exactly.
- :func:`account`: after the load stopped and the archiver caught up, every
  acknowledged change checked in the state (a lookup) and in the history
  (PostgreSQL); what is missing from both is an acknowledged write Redis lost
  (asynchronous replication), what is in one only is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from segments_core.redis_client import connect
from segments_core.streams import group_state, last_generated_ids
from segments_dev.embedded import free_port
from tests.support import KEYSPACE
from tests.support.history import FAST

SLUGS = [f"FO_{i}" for i in range(6)]
"""The segments the load changes memberships of."""
PLAN = [("add", s) for s in SLUGS] + [("remove", s) for s in SLUGS]
"""Each user's changes, in order: every (user, slug) pair is added once, removed once."""
WAIT_S = 60.0
"""Bound of every wait here: far above what a healthy run takes."""
REQUEST_TIMEOUT_S = 10.0
"""A request that takes longer counts as failed (a hung API)."""


def _segments_command() -> list[str]:
    script = Path(sys.executable).parent / "segments"
    return [str(script)] if script.exists() else [sys.executable, "-m", "segments_cli"]


class Stack:
    """The API (``segments serve``) and one archiver, as real processes."""

    def __init__(self, redis_url: str, database_url: str, folder: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        root = Path(__file__).resolve().parent.parent.parent
        self.env = {
            **os.environ,
            **FAST,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "SEGMENTS_SIGNING_KEY": "failover-test-signing-key-0123456789",
            "SEGMENTS_ARCHIVER_NAME": "failover",
            "PYTHONPATH": str(root),
            **env,
        }
        self.api: subprocess.Popen[bytes] | None = None
        self.archiver: subprocess.Popen[bytes] | None = None

    def start(self) -> Stack:
        self.api = self._spawn("api.log", "serve", "--host", "127.0.0.1", "--port", str(self.port))
        self.archiver = self._spawn("archiver.log", "archiver")
        deadline = time.monotonic() + WAIT_S
        while True:
            self.assert_running()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if time.monotonic() > deadline:
                raise AssertionError(f"segments serve does not answer:\n{self.logs()}")
            time.sleep(0.05)

    def _spawn(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.folder / log_name, "ab") as log:
            return subprocess.Popen(
                [*_segments_command(), *args], env=self.env, stdout=log, stderr=log
            )

    def assert_running(self) -> None:
        """Neither process has exited (so neither was ever restarted)."""
        for name, proc in (("api", self.api), ("archiver", self.archiver)):
            assert proc is not None and proc.poll() is None, f"{name} exited:\n{self.logs()}"

    def logs(self, lines: int = 40) -> str:
        out = []
        for name in ("api.log", "archiver.log"):
            path = self.folder / name
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    def log_text(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in (self.api, self.archiver):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request of the load."""

    kind: str  # "change" or "lookup"
    user: int
    op: str | None  # "add" / "remove" for changes
    slug: str | None
    status: int  # 0: no HTTP answer at all (timeout, connection refused)
    started: float  # time.monotonic()
    ended: float
    error: str = ""

    @property
    def shard(self) -> int:
        return KEYSPACE.shard_of(self.user)


@dataclass
class Load:
    """Writers and readers against ``base_url`` on a thread of their own."""

    base_url: str
    writers: int = 4
    readers: int = 2
    pause_s: float = 0.005
    """Between two requests of one worker: a steady stream, not a flood that
    starves six Redis processes of the 2-core machine."""
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _next_user: Iterator[int] = field(default_factory=lambda: itertools.count(1_000))

    def start(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive(), "the load did not stop"
        return self.outcomes

    def wait_for(self, count: int) -> None:
        """Until ``count`` more requests have been answered."""
        target = len(self.outcomes) + count
        deadline = time.monotonic() + WAIT_S
        while len(self.outcomes) < target:
            assert time.monotonic() < deadline, "the load makes no progress"
            time.sleep(0.01)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.writers + self.readers)
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
        ) as http:
            await asyncio.gather(
                *(self._writer(http) for _ in range(self.writers)),
                *(self._reader(http, r) for r in range(self.readers)),
            )

    async def _call(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
        started = time.monotonic()
        try:
            response = await http.request(method, path, **kw)
            return response.status_code, started, time.monotonic(), ""
        except httpx.HTTPError as exc:
            return 0, started, time.monotonic(), f"{type(exc).__name__}: {exc}"

    async def _writer(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            user = next(self._next_user)
            for op, slug in PLAN:
                if self._stop.is_set():
                    return
                body = {"add": [slug]} if op == "add" else {"remove": [slug]}
                status, t0, t1, err = await self._call(
                    http, "POST", f"/api/v1/users/{user}/segments", json=body
                )
                self.outcomes.append(Outcome("change", user, op, slug, status, t0, t1, err))
                await asyncio.sleep(self.pause_s)

    async def _reader(self, http: httpx.AsyncClient, seed: int) -> None:
        for n in itertools.count(seed * 7919):
            if self._stop.is_set():
                return
            user = 1 + n % 5_000  # known and unknown users alike, every shard
            status, t0, t1, err = await self._call(http, "GET", f"/api/v1/users/{user}/segments")
            self.outcomes.append(Outcome("lookup", user, None, None, status, t0, t1, err))
            await asyncio.sleep(self.pause_s)


async def wait_archived(redis_url: str, timeout_s: float = WAIT_S) -> None:
    """Until every event in the streams now is archived (the report's rule)."""
    redis = await connect(redis_url)
    try:
        streams = KEYSPACE.history_streams()
        targets = {s: t for s, t in (await last_generated_ids(redis, streams)).items() if t}
        deadline = time.monotonic() + timeout_s
        while targets:
            states = await asyncio.gather(*(group_state(redis, s) for s in targets))
            targets = {
                st.stream: targets[st.stream]
                for st in states
                if not st.archived_through(targets[st.stream])
            }
            assert time.monotonic() < deadline, f"archiver still behind on {sorted(targets)}"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


@dataclass
class Accounts:
    """What became of the acknowledged changes (see :func:`account`)."""

    acknowledged: int = 0
    lost: list[tuple[int, str, str]] = field(default_factory=list)
    """Acknowledged, then missing from state and history alike: lost by Redis."""
    state_only: list[tuple[int, str, str]] = field(default_factory=list)
    """In the state, not in the history: a bug (a change without its event)."""
    history_only: list[tuple[int, str, str]] = field(default_factory=list)
    """In the history, not in the state: archived from a master, then lost with it."""
    duplicates: list[tuple[int, str, str]] = field(default_factory=list)


def account(base_url: str, database_url: str, outcomes: Iterable[Outcome]) -> Accounts:
    """Every acknowledged change, checked against the state and the history.

    Per (user, slug): an acknowledged add must have left an ``add`` row, an
    acknowledged remove after an acknowledged add a ``remove`` row; the state
    is what the last acknowledged change left, unless a later change of the
    pair got no clear answer (a 503 may or may not have applied).
    """
    pairs: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for o in outcomes:
        if o.kind == "change":
            assert o.slug is not None and o.op is not None
            pairs[(o.user, o.slug)][o.op] = o.status
    users = sorted({u for u, _ in pairs})
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, segment, operation FROM history WHERE user_id = ANY(%s)", (users,)
        ).fetchall()
    history = Counter((u, s, op) for u, s, op in rows)
    state: dict[int, set[str]] = {}
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as http:
        for i in range(0, len(users), 1000):
            chunk = users[i : i + 1000]
            reply = http.post("/api/v1/users/lookup", json={"user_ids": chunk})
            assert reply.status_code == 200, reply.text
            for item in reply.json()["users"]:
                state[item["user_id"]] = set(item["segments"])
    out = Accounts()
    for (user, slug), ops in pairs.items():
        add, remove = ops.get("add"), ops.get("remove")
        added, removed = history[(user, slug, "add")], history[(user, slug, "remove")]
        if added > 1 or removed > 1:
            out.duplicates.append((user, slug, f"{added} adds, {removed} removes"))
        present = slug in state[user]
        if add == 200:
            out.acknowledged += 1
            if remove is None:  # the add is the last word: in state and history, or lost
                if present and not added:
                    out.state_only.append((user, slug, "add"))
                elif added and not present:
                    out.history_only.append((user, slug, "add"))
                elif not added:
                    out.lost.append((user, slug, "add"))
            elif not added:  # removed since (or maybe): the add stays in history
                out.lost.append((user, slug, "add"))
        if remove == 200:
            out.acknowledged += 1
            if present:
                out.lost.append((user, slug, "remove"))
            elif add == 200 and added and not removed:
                out.state_only.append((user, slug, "remove"))
    return out


@dataclass
class Figures:
    """Requests of one scenario by status, and how long the trouble lasted."""

    scenario: str
    by_status: dict[str, int]
    touched_by_status: dict[str, int]
    """Requests of users whose shard the operation touched."""
    others_by_status: dict[str, int]
    disturbed_s: float
    """From the operation's start to the last request that was not a 200."""
    healthy_s: float
    """From the operation's start until the cluster was healthy again."""
    slowest_ms: float
    """The slowest request that started after the operation did."""
    change_p50_ms: float
    lookup_p50_ms: float
    """Median times of the requests answered before the operation (steady state)."""
    acknowledged: int = 0
    lost: int = 0

    def line(self) -> str:
        return (
            f"{self.scenario}: requests {self.by_status} (touched shards {self.touched_by_status},"
            f" others {self.others_by_status}); non-200 answers for {self.disturbed_s:.2f} s;"
            f" cluster healthy after {self.healthy_s:.2f} s; slowest request"
            f" {self.slowest_ms:.0f} ms; median change {self.change_p50_ms:.1f} ms, lookup"
            f" {self.lookup_p50_ms:.1f} ms; acknowledged changes {self.acknowledged},"
            f" lost {self.lost}"
        )


def figures(
    scenario: str,
    outcomes: list[Outcome],
    touched: set[int],
    started: float,
    healthy_s: float,
) -> Figures:
    def label(o: Outcome) -> str:
        return str(o.status) if o.status else "no answer"

    after = [o for o in outcomes if o.started >= started]
    before = [o for o in outcomes if o.ended < started and o.status == 200]

    def median_ms(kind: str) -> float:
        times = sorted((o.ended - o.started) * 1000 for o in before if o.kind == kind)
        return times[len(times) // 2] if times else 0.0

    bad = [o.ended for o in outcomes if o.status != 200 and o.ended >= started]
    return Figures(
        scenario=scenario,
        by_status=dict(Counter(label(o) for o in outcomes)),
        touched_by_status=dict(Counter(label(o) for o in outcomes if o.shard in touched)),
        others_by_status=dict(Counter(label(o) for o in outcomes if o.shard not in touched)),
        disturbed_s=max(bad) - started if bad else 0.0,
        healthy_s=healthy_s,
        slowest_ms=max(((o.ended - o.started) * 1000 for o in after), default=0.0),
        change_p50_ms=median_ms("change"),
        lookup_p50_ms=median_ms("lookup"),
    )


def report(fig: Figures) -> None:
    """Print the figures, and append them to ``$SEGMENTS_FAILOVER_REPORT`` when set."""
    print(fig.line())
    target = os.environ.get("SEGMENTS_FAILOVER_REPORT")
    if target:
        with open(target, "a") as out:
            out.write(fig.line() + "\n")


def shards_on(slots: Iterable[int]) -> set[int]:
    """The logical shards whose hash tag lives in one of ``slots``."""
    from redis.crc import key_slot

    wanted = set(slots)
    return {k.shard for k in KEYSPACE.shard_keys if key_slot(k.tag.encode()) in wanted}
