"""The domain's input rules, each written once (SPEC §3, §4).

Every edge that reads a value from outside takes its rule from here: the API's
request models and path and query parameters (``service.models``,
``service.api``), the hot path (``service.hotpath``), report links
(``service.reports``) and the archiver's parsing of stream entries
(``archiver.events``). So the copies cannot drift apart.

Patterns come in two forms built from one body:

- ``*_PATTERN``, for msgspec and Litestar constraints and so the OpenAPI
  schema: it means the same under Python's ``re.search`` and ECMA-262.
  In Python ``$`` also matches before a final newline (``"A\\n"``), so each
  ends in ``$(?!\\n)``; for ECMA-262 the look-ahead is a no-op.
- ``is_*`` / ``parse_*``, Python checks with ``fullmatch``: no trailing
  newline slips through.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from segments_core.clock import from_datetime


def _schema_pattern(body: str) -> str:
    return f"^(?:{body})$(?!\\n)"


# --- slug ----------------------------------------------------------------------------

SLUG_MAX_LENGTH: Final = 100
_SLUG_BODY = "[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
SLUG_PATTERN: Final = _schema_pattern(_SLUG_BODY)
"""1 to 100 characters, letters, digits, ``_ . -``, the first a letter or digit:
never ``= + - @``, so a slug can never become a spreadsheet formula in a CSV."""
_SLUG = re.compile(_SLUG_BODY)
_SLUG_BYTES = re.compile(_SLUG_BODY.encode())


def is_slug(value: str | bytes) -> bool:
    pattern: Any = _SLUG_BYTES if isinstance(value, bytes) else _SLUG
    return pattern.fullmatch(value) is not None


# --- user id ------------------------------------------------------------------------

MIN_USER_ID: Final = 1
MAX_USER_ID: Final = 2**63 - 1
USER_ID_SCHEMA: Final[dict[str, Any]] = {
    "type": "integer",
    "format": "int64",
    "minimum": MIN_USER_ID,
    "maximum": MAX_USER_ID,
}
"""What the OpenAPI schema says of a user id in a path or a query string."""


def canonical_int(text: str | bytes, maximum: int) -> int | None:
    """A whole number from 1 to ``maximum`` in its one canonical spelling, else None.

    Plain ASCII decimal digits: no sign, no leading zero, no spaces, no
    float or exponent notation (``1.0``, ``1e3``), no other script's digits
    (``int()`` reads all of those). Checked before any conversion, so even
    a number thousands of digits long is refused cheaply.
    """
    if not 0 < len(text) <= len(str(maximum)) or not text.isascii() or not text.isdigit():
        return None
    if text[0] in (48, "0"):  # b"0"[0] is 48
        return None
    value = int(text)
    return value if value <= maximum else None


def parse_user_id(text: str | bytes) -> int | None:
    """A user id (``canonical_int``), else None.

    An id is a key, in paths, query strings, signed links and stream
    entries: another spelling of the same number (``042``, ``+42``,
    ``42.0``, ``4.2e1``) is refused rather than read, so one id has exactly
    one spelling everywhere.
    """
    return canonical_int(text, MAX_USER_ID)


def is_user_id(value: int) -> bool:
    return MIN_USER_ID <= value <= MAX_USER_ID


# --- report period ------------------------------------------------------------------

_PERIOD_BODY = "(?:19[7-9][0-9]|[2-9][0-9]{3})-(?:0[1-9]|1[0-2])"
PERIOD_PATTERN: Final = _schema_pattern(_PERIOD_BODY)
"""A UTC month ``YYYY-MM`` from 1970-01 to 9999-12. Its end (the next month's
start, up to 10000-01-01) is computed in integer milliseconds, never as a
Python datetime, so every period and its download are representable."""
_PERIOD = re.compile(_PERIOD_BODY)


def parse_period(text: str) -> tuple[int, int] | None:
    """``(year, month)`` of a period, else None."""
    if _PERIOD.fullmatch(text) is None:
        return None
    return int(text[:4]), int(text[5:])


def period_bounds_ms(year: int, month: int) -> tuple[int, int]:
    """First and one-past-last millisecond of a UTC month (ms since the epoch)."""
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    return _month_start_ms(year, month), _month_start_ms(next_year, next_month)


def _month_start_ms(year: int, month: int) -> int:
    if year > 9999:  # 10000-01-01, the end of the last period: December has 31 days
        return _month_start_ms(9999, 12) + 31 * 86_400_000
    return from_datetime(datetime(year, month, 1, tzinfo=UTC))


# --- deadlines ----------------------------------------------------------------------

MAX_TTL_SECONDS: Final = 100 * 365 * 24 * 3600
"""A century: far enough for any experiment, small enough for exact ms math."""
MAX_DEADLINE: Final = datetime(9999, 1, 1, tzinfo=UTC)
"""Every deadline lies before this (exclusive). A year short of the end of
Python's datetimes: a deadline is read back as a datetime (``?expand=true``,
the change feed), in any time zone, and must always be representable."""
MAX_DEADLINE_MS: Final = 253_370_764_800_000
"""``MAX_DEADLINE`` in ms since the epoch."""


def deadline_ms(expires_at: datetime) -> int:
    """An ``expires_at`` (timezone-aware) in ms; ``ValueError`` outside the bounds.

    Whether it is in the future is for the script to say, on the Redis
    server's clock; a time at or before the epoch is in the past anyway.
    """
    ms = from_datetime(expires_at)
    if ms <= 0:
        raise ValueError("expires_at is not in the future")
    if ms >= MAX_DEADLINE_MS:
        raise ValueError(f"expires_at must be before {MAX_DEADLINE.isoformat()}")
    return ms


# --- percent ------------------------------------------------------------------------

PERCENT_MAX: Final = 100
PERCENT_STEP: Final = 0.01
"""Two decimals at most: the cohort function's resolution (10,000 buckets)."""
_HUNDREDTHS = Decimal("0.01")


def percent_x100(value: float) -> int:
    """The percent in hundredths: 0 < p <= 100 with two decimals at most, else
    ``ValueError``, never rounded.

    A JSON number reaches us as the nearest double; it has two decimals at
    most exactly when it is the double nearest to such a number, i.e. when
    ``round(value, 2)`` (correctly rounded in Python) gives it back.
    """
    if not 0 < value <= PERCENT_MAX or round(value, 2) != value:
        raise ValueError("percent must be above 0 and at most 100, with two decimals at most")
    return round(value * 100)


def parse_percent_text(text: str) -> Decimal:
    """A percent written in decimal (a stream entry's ``p``); ``ValueError`` if not one."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    finite = value.is_finite()
    if not finite or not 0 < value <= PERCENT_MAX or value != value.quantize(_HUNDREDTHS):
        raise ValueError(f"not a percent with two decimals at most: {text!r}")
    return value


# --- free text ----------------------------------------------------------------------

DESCRIPTION_MAX_LENGTH: Final = 1000
DESCRIPTION_PATTERN: Final = "^[^\\x00]*$"
"""No NUL: PostgreSQL text cannot hold one, so the archive could not store the
segment's history row. (Lone surrogates never get this far: they are not
valid UTF-8, and the JSON decoder refuses them.)"""


def is_storable_text(text: str) -> bool:
    """Text the archive can store as it is."""
    return "\x00" not in text
