"""When to try a call again: 503 and connection failures, with backoff, within the call's time."""

from __future__ import annotations

import random
import time
from email.utils import parsedate_to_datetime

BACKOFF_FIRST_S = 0.05
"""First pause after a failure; doubles each attempt (with jitter)."""
BACKOFF_MAX_S = 1.0
"""Longest pause between two attempts, unless the service asks for more."""


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def pause_s(attempt: int, retry_after: float | None) -> float:
    """Pause before attempt ``attempt + 1``: backoff with jitter, at least Retry-After."""
    backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt) * random.uniform(0.5, 1.0)
    return backoff if retry_after is None else max(backoff, retry_after)
