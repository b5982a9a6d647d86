"""The settings ``segments restore`` and ``segments verify`` both read."""

from __future__ import annotations

from typing import NamedTuple

from segments_core import config
from segments_core.config import ConfigError


class Settings(NamedTuple):
    redis_url: str
    database_url: str
    shards: int | None
    """``SEGMENTS_SHARDS`` (None: the stored number)."""


def read() -> Settings:
    """``REDIS_URL`` and ``DATABASE_URL`` (both required) and ``SEGMENTS_SHARDS``;
    ConfigError when one is missing or bad."""
    redis_url = config.redis_url()
    database_url = config.database_url()
    configured = config.shards()
    if redis_url is None or database_url is None:
        raise ConfigError("REDIS_URL and DATABASE_URL must both be set")
    return Settings(redis_url, database_url, configured)
