"""Time as the service sees it: integer milliseconds since the Unix epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def from_datetime(value: datetime) -> int:
    """Exact, in integers: ``timestamp() * 1000`` in floats can be 1 ms short."""
    return (value - _EPOCH) // _MS
