"""Settings from the environment: each declared once, on its field.

A process's settings are one frozen msgspec Struct (``service.settings.Settings``,
``archiver.config.ArchiverConfig``). Each field that the environment may set
carries its declaration in its annotation, next to its type and its default::

    sweep_interval_s: Annotated[
        float, Setting("SEGMENTS_SWEEP_INTERVAL", positive_number, "how often ... seconds")
    ] = 1.0

so the variable's name, type, default and help are written once. :func:`load`
reads every declared field from the environment with its parser (an unset or
empty variable keeps the field's default), ``segments --help`` lists them
(:func:`help_lines`), and the README's tables are checked against them
(:func:`markdown_rows`). A bad value raises :class:`ConfigError` naming the
variable.

The connection settings that every process shares (``REDIS_URL``,
``DATABASE_URL``, ``SEGMENTS_SHARDS``) are declared here as annotated types.
"""

from __future__ import annotations

import math
import os
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from segments_core.keys import MAX_SHARDS


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


Parser = Callable[[str], Any]
"""Turns a variable's (stripped, non-empty) text into the field's value, or
raises ``ValueError`` with the rest of a sentence that starts with the
variable's name ("must be a number, got 'x'")."""


@dataclass(frozen=True, slots=True)
class Setting:
    """The environment variable behind a settings field."""

    env: str
    """The variable's name."""
    parse: Parser
    help: str
    """One line for ``--help`` and the README: what it sets, with its unit."""
    default: str | None = None
    """The default as documentation says it, when the field's value alone does
    not (None for "not set", a value computed at start-up)."""


S = TypeVar("S", bound=msgspec.Struct)


def declared(cls: type[msgspec.Struct]) -> list[tuple[msgspec.structs.FieldInfo, Setting]]:
    """The fields of ``cls`` the environment may set, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found = []
    for field in msgspec.structs.fields(cls):
        setting = next(
            (m for m in getattr(hints[field.name], "__metadata__", ()) if isinstance(m, Setting)),
            None,
        )
        if setting is not None:
            found.append((field, setting))
    return found


def load(cls: type[S], env: Mapping[str, str] | None = None, **fixed: Any) -> S:
    """``cls`` with every declared field read from ``env`` (default ``os.environ``).

    ``fixed`` sets fields directly (they are not read from ``env``). Checks
    between fields belong in ``cls.__post_init__``, raising ``ConfigError``.
    """
    env = os.environ if env is None else env
    values = dict(fixed)
    for field, setting in declared(cls):
        if field.name not in values:
            raw = env.get(setting.env, "").strip()
            if raw:
                values[field.name] = parse(setting, raw)
    return cls(**values)


def parse(setting: Setting, raw: str) -> Any:
    """``raw`` through the setting's parser; a refusal names the variable."""
    try:
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{setting.env} {exc}") from None


def read(setting: Setting, env: Mapping[str, str] | None = None) -> Any:
    """One variable's value, None when it is unset or empty."""
    raw = (os.environ if env is None else env).get(setting.env, "").strip()
    return parse(setting, raw) if raw else None


def default_text(field: msgspec.structs.FieldInfo, setting: Setting, markdown: bool) -> str:
    """The default of a declared field as people read it."""
    if setting.default is not None:
        return setting.default
    value = field.default
    if value is msgspec.NODEFAULT or value is None:
        return "none"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"`{text}`" if markdown else text


def help_lines(cls: type[msgspec.Struct]) -> list[str]:
    """``NAME  help (default: ...)`` for each declared field, for ``--help``."""
    rows = declared(cls)
    indent = " " * (max(len(setting.env) for _, setting in rows) + 4)
    lines = []
    for field, setting in rows:
        default = default_text(field, setting, markdown=False)
        lines += textwrap.wrap(
            f"{setting.help} (default: {default})".replace("`", ""),
            width=100,
            initial_indent=f"  {setting.env}".ljust(len(indent)),
            subsequent_indent=indent,
        )
    return lines


def markdown_rows(cls: type[msgspec.Struct]) -> list[str]:
    """The declared fields as rows of a Markdown table: variable, meaning, default."""
    return [
        f"| `{setting.env}` | {setting.help} | {default_text(field, setting, markdown=True)} |"
        for field, setting in declared(cls)
    ]


# -- parsers ---------------------------------------------------------------------------------


def text(raw: str) -> str:
    return raw


def path(raw: str) -> Path:
    return Path(raw)


def number(raw: str) -> float:
    """A positive, finite number."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive, finite number, got {raw!r}")
    return value


def whole(minimum: int) -> Parser:
    """A whole number of at least ``minimum``."""

    def parse_whole(raw: str) -> int:
        digits = raw[1:] if raw[:1] in "+-" else raw
        if not (digits.isascii() and digits.isdecimal()):
            raise ValueError(f"must be a whole number, got {raw!r}")
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {raw!r}")
        return value

    return parse_whole


def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def url(*schemes: str) -> Parser:
    """A URL of one of ``schemes``."""

    def parse_url(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            raise ValueError(f"must be a URL starting with {' or '.join(schemes)}://")
        return raw

    return parse_url


def shard_count(raw: str) -> int:
    if not raw.isdecimal() or not 1 <= int(raw) <= MAX_SHARDS:
        raise ValueError(f"must be a whole number from 1 to {MAX_SHARDS}")
    return int(raw)


# -- the settings every process shares -------------------------------------------------------

REDIS_SCHEMES = ("redis", "rediss", "unix")
DATABASE_SCHEMES = ("postgresql", "postgres")

REDIS_URL = Setting(
    "REDIS_URL",
    url(*REDIS_SCHEMES),
    "Redis: `redis://`, `rediss://` or `unix://`; a single Redis or any node of a Redis Cluster",
    default="`dev`: embedded; required by `serve`, `archiver`",
)
DATABASE_URL = Setting(
    "DATABASE_URL",
    url(*DATABASE_SCHEMES),
    "PostgreSQL for the history: `postgresql://user:pass@host:5432/db`",
    default="`dev`: embedded; required by `archiver`, `migrate`",
)
SHARDS = Setting(
    "SEGMENTS_SHARDS",
    shard_count,
    f"logical shards of a new deployment, 1 to {MAX_SHARDS}; a deployment keeps the number"
    " it started with",
    default="as stored; `16` for a new deployment",
)

RedisUrl = Annotated[str | None, REDIS_URL]
DatabaseUrl = Annotated[str | None, DATABASE_URL]
Shards = Annotated[int | None, SHARDS]


def redis_url(env: Mapping[str, str] | None = None) -> str | None:
    """``REDIS_URL``: a single Redis or any node of a Redis Cluster."""
    value: str | None = read(REDIS_URL, env)
    return value


def database_url(env: Mapping[str, str] | None = None) -> str | None:
    """``DATABASE_URL``: the PostgreSQL of the history."""
    value: str | None = read(DATABASE_URL, env)
    return value


def shards(env: Mapping[str, str] | None = None) -> int | None:
    """``SEGMENTS_SHARDS``: logical shards of a new deployment (None: keep the stored
    number, 16 for a new one). See ``segments_core.keys.load_keyspace``."""
    value: int | None = read(SHARDS, env)
    return value
