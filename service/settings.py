"""Configuration, read once from the environment into one typed object.

A bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from segments_core import config
from segments_core.config import ConfigError


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    redis_url: str | None = None
    """A single Redis or any node of a Redis Cluster; None: embedded (dev only)."""
    database_url: str | None = None
    """PostgreSQL; None: embedded (dev only)."""
    public_url: str | None = None
    """Base of report links; None: the host of the request."""
    signing_key: bytes | None = None
    """HMAC key of report links; None: generated and kept in the data folder (dev)."""
    read_tokens: frozenset[str] = frozenset()
    write_tokens: frozenset[str] = frozenset()
    data_dir: Path = Path(".data")
    report_link_ttl_s: int = 3600
    report_wait_s: float = 5.0
    sweep_interval_s: float = 1.0
    shards: int | None = None
    """Logical shards of a new deployment; None: as stored (16 for a new one)."""

    @property
    def auth_enabled(self) -> bool:
        return bool(self.read_tokens or self.write_tokens)


def _tokens(raw: str) -> tuple[frozenset[str], frozenset[str]]:
    """``SEGMENTS_TOKENS``: comma-separated ``token:scope``, scope ``read`` or ``write``.

    A write token may also read.
    """
    read: set[str] = set()
    write: set[str] = set()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        token, _, scope = item.rpartition(":")
        if not token or scope not in ("read", "write"):
            raise ConfigError("SEGMENTS_TOKENS must look like 'token1:read,token2:write'")
        (write if scope == "write" else read).add(token)
    return frozenset(read | write), frozenset(write)


def _positive(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive, finite number, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name} must be a positive whole number, got {raw!r}")
    return int(raw)


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    key = env.get("SEGMENTS_SIGNING_KEY", "")
    if key and len(key) < 16:
        raise ConfigError("SEGMENTS_SIGNING_KEY must be at least 16 characters")
    read, write = _tokens(env.get("SEGMENTS_TOKENS", ""))
    public = config.url(env, "PUBLIC_URL", ("http", "https"))
    return Settings(
        redis_url=config.redis_url(env),
        database_url=config.database_url(env),
        public_url=public.rstrip("/") if public else None,
        signing_key=key.encode() if key else None,
        read_tokens=read,
        write_tokens=write,
        data_dir=Path(env.get("SEGMENTS_DATA_DIR", ".data")),
        report_link_ttl_s=_positive_int(env, "SEGMENTS_REPORT_LINK_TTL", 3600),
        report_wait_s=_positive(env, "SEGMENTS_REPORT_WAIT", 5.0),
        sweep_interval_s=_positive(env, "SEGMENTS_SWEEP_INTERVAL", 1.0),
        shards=config.shards(env),
    )
