"""Logging of every process (API, archiver, ``segments dev``): one setup, two formats.

``SEGMENTS_LOG_FORMAT=text`` (the default) writes readable lines;
``SEGMENTS_LOG_FORMAT=json`` makes every line one JSON object with ``time``,
``level``, ``logger``, ``message``, and ``request_id`` when the line is about
a request (``exc_info`` holds a traceback). uvicorn's own loggers are routed
through the same handler (:func:`uvicorn_log_config`), so in JSON every line
of the API parses.

Request ids: the API sets :data:`REQUEST` at the start of each request
(``service.observe``); :class:`RequestIdFilter`, on the one handler, copies
its id onto every record, so any log line written while the request runs
carries it, whoever writes it (:func:`current_request_id` reads it).

Secrets: every formatted line passes :func:`redact`, which blanks bearer
tokens, report-link signatures, passwords in URLs and every value handed to
:func:`register_secret` (the signing key, the tokens), in the message and in
tracebacks alike.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from itertools import count
from typing import Annotated, Any

from segments_core.config import Setting

TEXT, JSON = "text", "json"


def _log_format(raw: str) -> str:
    value = raw.lower()
    if value not in (TEXT, JSON):
        raise ValueError(f"must be {TEXT} or {JSON}, got {raw!r}")
    return value


LOG_FORMAT = Setting(
    "SEGMENTS_LOG_FORMAT",
    _log_format,
    "log lines: `text` (readable) or `json` (one object a line: time, level, logger,"
    " message, request_id)",
)
LogFormat = Annotated[str, LOG_FORMAT]


def log_format(env: Mapping[str, str] | None = None) -> str:
    """``SEGMENTS_LOG_FORMAT`` (``ConfigError`` naming it when it is neither text nor json)."""
    from segments_core.config import read

    value: str | None = read(LOG_FORMAT, env)
    return value or TEXT


# -- request ids ---------------------------------------------------------------------------

class RequestLog:
    """The request being handled, as logging sees it: its id, and how many
    error lines were written about it (so a 500 is logged once)."""

    __slots__ = ("errors", "id")

    def __init__(self, request_id: str) -> None:
        self.id = request_id
        self.errors = 0


REQUEST: ContextVar[RequestLog | None] = ContextVar("segments_request", default=None)
"""The request being handled (None outside requests); set by ``service.observe``."""


def current_request_id() -> str | None:
    """The id of the request being handled, if any (for a log line or an error body)."""
    current = REQUEST.get()
    return None if current is None else current.id


MAX_REQUEST_ID = 128
_VALID_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,%d}" % MAX_REQUEST_ID)
"""What a client's ``X-Request-ID`` may be: short and printable without quoting,
so it cannot forge or break a log line."""


class _IdSource:
    """Ids unique across processes: a random per-process prefix and a counter
    (cheaper than a UUID per request); the prefix is renewed in a forked child."""

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.prefix = secrets.token_hex(6)
        self.counter = count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):06x}"


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.renew)


def new_request_id() -> str:
    return _ids.next()


def accept_request_id(raw: bytes) -> str | None:
    """A client's ``X-Request-ID`` when it is acceptable, else None (make a new one)."""
    return raw.decode("ascii") if _VALID_ID.fullmatch(raw) else None


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``record.request_id``) and
    counts the request's error lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = REQUEST.get()
        if getattr(record, "request_id", None) is None:
            record.request_id = None if current is None else current.id
        if current is not None and record.levelno >= logging.ERROR:
            current.errors += 1
        return True


# -- secrets -------------------------------------------------------------------------------

REDACTED = "[redacted]"
_PATTERNS = [
    (re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"), r"\1" + REDACTED),
    # report links sign their query string (service.reports): sig=...
    (re.compile(r"(?i)([?&](?:sig|signature|token|access_token)=)[^&\s\"'#]+"), r"\1" + REDACTED),
    # user:password@ in any URL
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/\s@]+:)[^@\s/]+@"), r"\1" + REDACTED + "@"),
]
_secrets: set[str] = set()
MIN_SECRET = 6
"""Shorter values are not blanked by value (they would blank ordinary words)."""


def register_secret(value: str | bytes | None) -> None:
    """Blank ``value`` wherever it would appear in a log line from now on."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if value and len(value) >= MIN_SECRET:
        _secrets.add(value)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for value in _secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


# -- formats -------------------------------------------------------------------------------


def _utc(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message[, request_id][, exc_info]."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            doc["request_id"] = request_id
        if record.exc_info:
            doc["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            doc["stack_info"] = redact(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO segments.api [request id]: message``."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        where = f"{record.name} [{request_id}]" if request_id is not None else record.name
        line = f"{_utc(record.created)} {record.levelname} {where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


def _level(level: str | int) -> int | str:
    if isinstance(level, str):
        level = level.upper()
        return 5 if level == "TRACE" else level  # uvicorn's own level below DEBUG
    return level


def config_dict(fmt: str, level: str | int = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: one stderr handler in ``fmt`` for
    every logger (uvicorn's included), with request ids and redaction."""
    formatter = JsonFormatter if fmt == JSON else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"segments": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "segments",
                "filters": ["request_id"],
            }
        },
        # uvicorn's loggers hand their lines to the root handler, not to their own.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
        "root": {"level": _level(level), "handlers": ["stderr"]},
    }


def configure(fmt: str, level: str | int = "INFO") -> None:
    """Set up logging of this process (the archiver, ``segments dev``, the CLI)."""
    logging.config.dictConfig(config_dict(fmt, level))
    logging.captureWarnings(True)  # warnings become log lines, in the same format


def uvicorn_log_config(fmt: str, level: str | int = "INFO") -> dict[str, Any]:
    """``log_config`` for uvicorn: every worker (and the supervisor) applies it."""
    return config_dict(fmt, level)


def stderr_is_configured() -> bool:
    """Whether logging already has a handler (then it is left as it is)."""
    return bool(logging.getLogger().handlers) or sys.stderr is None
