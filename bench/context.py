"""What one bench run is asked to do (``Options``, the checked command line) and
what it holds while it runs (``Context``): the service it started, its clients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bench import cpu, scenarios, services
from segments_core.keys import Keyspace

HTTP_CONNECTIONS = 32
"""The bench's own concurrent requests (seeding): enough to keep every API worker busy."""
HTTP_TIMEOUT_S = 120.0
"""Longest wait for one response: a 100% rollout over 1M users answers in seconds."""


@dataclass(kw_only=True)
class Options:
    """Field names are the command line's (``--percent-users`` -> ``percent_users``);
    the defaults here are the command line's defaults."""

    url: str | None = None
    redis_url: str | None = None
    database_url: str | None = None
    force: bool = False
    port: int = 8765
    workers: int = 2
    """One uvicorn worker per core; wrk and Redis share the cores with them."""
    shards: int | None = None
    """Logical shards of the bench's own deployment (None: the service's default)."""
    token: str | None = None
    scenarios: list[str] = field(default_factory=lambda: list(scenarios.DEFAULT))
    duration: float = 10.0
    warmup: float = 3.0
    connections: int = 64
    threads: int = 1
    """wrk threads: one event loop saturates 2 server workers at a fraction of a core."""
    repeats: int = 1
    users: int = 100_000
    memberships: int = 5
    segments: int = 20
    percent_users: int = 1_000_000
    zipf_exponent: float = 1.0
    seed: int = 1
    skip_seed: bool = False
    out: Path = Path(__file__).parent / "results"
    no_chart: bool = False
    profile: list[str] = field(default_factory=list)
    """Scenarios whose first run is profiled with py-spy (own service only)."""

    @property
    def own_service(self) -> bool:
        return self.url is None

    def settings(self) -> dict[str, str | int | float | bool | None]:
        """For the report: lists joined, paths as text, the token only as a yes/no."""
        out = {
            k: ",".join(v) if isinstance(v, list) else str(v) if isinstance(v, Path) else v
            for k, v in asdict(self).items()
            if k != "token"
        }
        return {**out, "auth": self.token is not None}


def http_client(url: str, token: str | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"authorization": f"Bearer {token}"} if token else None,
        limits=httpx.Limits(max_connections=HTTP_CONNECTIONS),
        timeout=HTTP_TIMEOUT_S,
        trust_env=False,  # loopback: no proxy from the environment
    )


def expect(resp: httpx.Response, what: str, *ok: int) -> httpx.Response:
    """``resp`` if its status is one of ``ok`` (default 200, 201), else a RuntimeError."""
    if resp.status_code not in (ok or (200, 201)):
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.content[:300]!r}")
    return resp


@dataclass
class Context:
    opts: Options
    run_dir: Path
    http: httpx.AsyncClient
    log: Callable[[str], None]
    keyspace: Keyspace = field(default_factory=Keyspace)
    """The deployment's, read from Redis once the service runs."""
    groups: dict[str, cpu.Lister] = field(default_factory=dict)
    api: services.Child | None = None
    archiver: services.Child | None = None
    redis: aioredis.Redis | None = None
    zipf_table: Path | None = None

    @property
    def url(self) -> str:
        return str(self.http.base_url).rstrip("/")
