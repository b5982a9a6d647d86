"""The API's settings: one typed object, each field declared once with its
environment variable, type, default and help (``segments_core.config``).

A bad value stops start-up with a message that names the variable. Adding a
setting is one field here (and its row in the README, which a test checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import msgspec

from segments_core import config
from segments_core.config import ConfigError, DatabaseUrl, RedisUrl, Setting, Shards
from segments_core.logging import LogFormat

__all__ = ["ConfigError", "Settings", "Tokens", "load"]


class Tokens(msgspec.Struct, frozen=True):
    """Bearer tokens by scope; a write token may also read."""

    read: frozenset[str] = frozenset()
    """Tokens that may read: the read tokens and the write tokens."""
    write: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: str) -> Tokens:
        """``token1:read,token2:write`` (a token may hold colons: the last one splits)."""
        read: set[str] = set()
        write: set[str] = set()
        for item in filter(None, (part.strip() for part in raw.split(","))):
            token, _, scope = item.rpartition(":")
            if not token or scope not in ("read", "write"):
                raise ValueError("must look like 'token1:read,token2:write'")
            (write if scope == "write" else read).add(token)
        return cls(read=frozenset(read | write), write=frozenset(write))

    def __bool__(self) -> bool:
        return bool(self.read or self.write)


def _public_url(raw: str) -> str:
    return config.url("http", "https")(raw).rstrip("/")


def _signing_key(raw: str) -> bytes:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return raw.encode()


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    redis_url: RedisUrl = None
    """None: embedded (``segments dev`` only)."""
    database_url: DatabaseUrl = None
    """None: embedded (``segments dev`` only); the API then serves no history."""
    public_url: Annotated[
        str | None,
        Setting(
            "PUBLIC_URL",
            _public_url,
            "base of report links, e.g. `https://segments.example.com`",
            default="the host of the request",
        ),
    ] = None
    signing_key: Annotated[
        bytes | None,
        Setting(
            "SEGMENTS_SIGNING_KEY",
            _signing_key,
            "HMAC key of report links, 16+ characters; every API process must share it",
            default="`dev`: generated in the data folder",
        ),
    ] = None
    """None: a random key per process (``segments dev`` keeps one in its data folder)."""
    tokens: Annotated[
        Tokens,
        Setting(
            "SEGMENTS_TOKENS",
            Tokens.parse,
            "bearer tokens with scopes, `token1:read,token2:write` (write implies read)",
            default="none: no authentication",
        ),
    ] = Tokens()
    data_dir: Annotated[
        Path,
        Setting(
            "SEGMENTS_DATA_DIR",
            config.path,
            "data folder of `segments dev` (embedded servers, signing key)",
        ),
    ] = Path(".data")
    report_link_ttl_s: Annotated[
        int,
        Setting("SEGMENTS_REPORT_LINK_TTL", config.whole(1), "lifetime of a report link, seconds"),
    ] = 3600
    report_wait_s: Annotated[
        float,
        Setting(
            "SEGMENTS_REPORT_WAIT",
            config.number,
            "how long a report request waits for the archiver to catch up, seconds",
        ),
    ] = 5.0
    sweep_interval_s: Annotated[
        float,
        Setting(
            "SEGMENTS_SWEEP_INTERVAL",
            config.number,
            "how often each API process sweeps expired memberships, seconds",
        ),
    ] = 1.0
    header_timeout_s: Annotated[
        float,
        Setting(
            "SEGMENTS_HEADER_TIMEOUT",
            config.number,
            "time a client has to send a request's headers, seconds (then 408; `serve`)",
        ),
    ] = 10.0
    body_timeout_s: Annotated[
        float,
        Setting(
            "SEGMENTS_BODY_TIMEOUT",
            config.number,
            "time a client has to send a request's body once its headers are in, seconds"
            " (then the connection is closed; `serve`)",
        ),
    ] = 30.0
    shards: Shards = None
    """None: as stored (16 for a new deployment)."""
    wait_replicas: Annotated[
        int,
        Setting(
            "SEGMENTS_WAIT_REPLICAS",
            config.whole(0),
            "Redis Cluster: a change is answered only once this many replicas hold it"
            " (else 503); closes Redis's replication window, costs a round trip per change",
        ),
    ] = 0
    ready_max_lag_s: Annotated[
        float,
        Setting(
            "SEGMENTS_READY_MAX_LAG",
            config.number,
            "`/readyz` fails when the oldest event not yet archived is older than this, seconds",
        ),
    ] = 10.0
    log_format: LogFormat = "text"
    request_metrics: Annotated[
        bool,
        Setting(
            "SEGMENTS_REQUEST_METRICS",
            config.boolean,
            "count and time every request for `/metrics` (`false` only to measure their cost)",
        ),
    ] = True

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def read_tokens(self) -> frozenset[str]:
        return self.tokens.read

    @property
    def write_tokens(self) -> frozenset[str]:
        return self.tokens.write


def load(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``env`` (default ``os.environ``)."""
    return config.load(Settings, env)
