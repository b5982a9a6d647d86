"""What one bench run is asked to do (``Options``) and what it holds while it
runs (``Context``): the service it started, its Redis client, its log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bench import cpu, services
from bench.httpclient import Target


@dataclass(kw_only=True)
class Options:
    url: str | None
    redis_url: str | None
    database_url: str | None
    force: bool
    port: int
    workers: int
    scenarios: list[str]
    duration: float
    warmup: float
    connections: int
    threads: int
    repeats: int
    users: int
    memberships: int
    segments: int
    percent_users: int
    zipf_exponent: float
    token: str | None
    out: Path
    seed: int
    skip_seed: bool
    chart: bool
    profile: list[str] = field(default_factory=list)
    """Scenarios whose first run is profiled with py-spy (own service only)."""

    @property
    def own_service(self) -> bool:
        return self.url is None


@dataclass
class Context:
    opts: Options
    run_dir: Path
    target: Target
    log: Callable[[str], None]
    groups: dict[str, cpu.Lister] = field(default_factory=dict)
    api: services.Child | None = None
    archiver: services.Child | None = None
    redis: aioredis.Redis | None = None
    zipf_table: Path | None = None


def settings_of(opts: Options) -> dict[str, str | int | float | bool | None]:
    return {
        "url": opts.url,
        "own_service": opts.own_service,
        "workers": opts.workers if opts.own_service else None,
        "scenarios": ",".join(opts.scenarios),
        "duration_s": opts.duration,
        "warmup_s": opts.warmup,
        "connections": opts.connections,
        "threads": opts.threads,
        "repeats": opts.repeats,
        "users": opts.users,
        "memberships": opts.memberships,
        "segments": opts.segments,
        "percent_users": opts.percent_users,
        "zipf_exponent": opts.zipf_exponent,
        "seed": opts.seed,
        "auth": opts.token is not None,
        "profile": ",".join(opts.profile) or None,
    }
