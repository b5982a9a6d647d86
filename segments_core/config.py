"""Configuration read from the environment, shared by every process of the service.

The connection URLs are read here, so the API (``service.settings``) and the
archiver (``archiver.config``) parse them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from segments_core.keys import MAX_SHARDS


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


def url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    """``env[name]`` when it is a URL of one of ``schemes``; None when unset or empty."""
    value = env.get(name, "").strip()
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(schemes)}://")
    return value


REDIS_SCHEMES = ("redis", "rediss", "unix")
DATABASE_SCHEMES = ("postgresql", "postgres")


def redis_url(env: Mapping[str, str] | None = None) -> str | None:
    """``REDIS_URL``: a single Redis or any node of a Redis Cluster."""
    return url(os.environ if env is None else env, "REDIS_URL", REDIS_SCHEMES)


def database_url(env: Mapping[str, str] | None = None) -> str | None:
    """``DATABASE_URL``: the PostgreSQL of the history."""
    return url(os.environ if env is None else env, "DATABASE_URL", DATABASE_SCHEMES)


def shards(env: Mapping[str, str] | None = None) -> int | None:
    """``SEGMENTS_SHARDS``: logical shards of a new deployment (None: keep the stored
    number, 16 for a new one). See ``segments_core.keys.load_keyspace``."""
    raw = (os.environ if env is None else env).get("SEGMENTS_SHARDS", "").strip()
    if not raw:
        return None
    if not raw.isdecimal() or not 1 <= int(raw) <= MAX_SHARDS:
        raise ConfigError(f"SEGMENTS_SHARDS must be a whole number from 1 to {MAX_SHARDS}")
    return int(raw)
