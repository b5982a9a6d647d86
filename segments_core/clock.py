"""Time as the service sees it: integer milliseconds since the Unix epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_LAST_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MS


def to_datetime(ms: int) -> datetime:
    """Exact, in integers. A time past the last datetime (a deadline stored
    before deadlines were bounded, see ``segments_core.rules``) reads as that
    last datetime: a read never fails on stored data."""
    return _EPOCH + min(ms, _LAST_MS) * _MS


def from_datetime(value: datetime) -> int:
    """Exact, in integers: ``timestamp() * 1000`` in floats can be 1 ms short."""
    return (value - _EPOCH) // _MS
