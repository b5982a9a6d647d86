"""``segments_core.rules``: each input rule, written once (issue 8 item 3, issue 9).

Pure functions, no server: the slug, user id, period, deadline, percent and
free-text rules, the request models built on them, and a check that no
runtime module carries a copy of a rule.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments_core import rules
from segments_core.clock import from_datetime, to_datetime
from service.models import AddItem, ChangeRequest, SegmentCreate, SegmentPatch

ROOT = Path(__file__).resolve().parent.parent

# --- slug --------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["A", "AVITO_VOICE_MESSAGES", "a.b-c_9", "9", "x" * 100])
def test_slugs_accepted(slug: str) -> None:
    assert rules.is_slug(slug)
    assert rules.is_slug(slug.encode())
    assert re.search(rules.SLUG_PATTERN, slug)


@pytest.mark.parametrize(
    "slug", ["", "A\n", "A\r\n", "\nA", "=A", "+A", "-A", "@A", "_A", "A B", "É", "x" * 101]
)
def test_slugs_refused_by_every_form_of_the_rule(slug: str) -> None:
    assert not rules.is_slug(slug)
    assert not rules.is_slug(slug.encode())
    # The constraint form, as msgspec applies it (re.search): no trailing newline.
    assert re.search(rules.SLUG_PATTERN, slug) is None
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"slug": slug}), type=SegmentCreate)


# --- user id -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", 1), ("42", 42), ("9223372036854775807", rules.MAX_USER_ID), (b"7", 7)],
)
def test_user_ids_in_canonical_form(text: str | bytes, expected: int) -> None:
    assert rules.parse_user_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", "0", "-1", "+1", "01", "042", "1.0", "1e3", "0.5e1", "1_000", " 1", "1 ", "1\n",
        "\u0663", "\uff11", "9223372036854775808", "99999999999999999999", b"042", b"1.0",
    ],
)  # fmt: skip
def test_user_ids_in_any_other_spelling_are_refused(text: str | bytes) -> None:
    assert rules.parse_user_id(text) is None


@given(st.integers(min_value=1, max_value=rules.MAX_USER_ID))
def test_every_user_id_round_trips(user_id: int) -> None:
    assert rules.parse_user_id(str(user_id)) == user_id


# --- period ------------------------------------------------------------------------


@pytest.mark.parametrize("period", ["1970-01", "2024-02", "9999-12"])
def test_periods_accepted_with_representable_bounds(period: str) -> None:
    year, month = rules.parse_period(period) or (0, 0)
    start, end = rules.period_bounds_ms(year, month)
    assert datetime.fromtimestamp(start / 1000, UTC) == datetime(year, month, 1, tzinfo=UTC)
    assert end > start
    assert re.search(rules.PERIOD_PATTERN, period)


def test_the_last_period_ends_at_the_year_10000() -> None:
    _, end = rules.period_bounds_ms(9999, 12)
    assert end == 253_402_300_800_000  # 10000-01-01T00:00:00Z, `date -d` can tell


@given(st.integers(min_value=1970, max_value=9998), st.integers(min_value=1, max_value=12))
def test_period_bounds_are_the_calendar_months(year: int, month: int) -> None:
    start, end = rules.period_bounds_ms(year, month)
    first = datetime(year, month, 1, tzinfo=UTC)
    following = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    assert (start, end) == (int(first.timestamp()) * 1000, int(following.timestamp()) * 1000)


@pytest.mark.parametrize(
    "period", ["1969-12", "2024-00", "2024-13", "2024-1", "24-01", "2024-01\n", "10000-01", ""]
)
def test_periods_refused(period: str) -> None:
    assert rules.parse_period(period) is None
    assert re.search(rules.PERIOD_PATTERN, period) is None


# --- deadlines ---------------------------------------------------------------------


def test_a_deadline_in_the_year_10000_is_refused() -> None:
    # 9999-12-31T23:59:59-01:00 is 10000-01-01T00:59:59Z: no datetime can hold it.
    late = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-1)))
    with pytest.raises(ValueError, match="before"):
        rules.deadline_ms(late)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"add": [{"slug": "A", "expires_at": "9999-12-31T23:59:59-01:00"}]}',
            type=ChangeRequest,
        )


def test_the_last_accepted_deadline_reads_back() -> None:
    last = rules.MAX_DEADLINE - timedelta(milliseconds=1)
    ms = rules.deadline_ms(last)
    assert ms == rules.MAX_DEADLINE_MS - 1
    assert from_datetime(rules.MAX_DEADLINE) == rules.MAX_DEADLINE_MS
    assert to_datetime(ms) == last
    with pytest.raises(ValueError):
        rules.deadline_ms(rules.MAX_DEADLINE)


def test_a_deadline_stored_before_the_bound_still_reads() -> None:
    """A deadline in the year 10000, stored before deadlines were bounded,
    reads as the last datetime instead of failing every read of its user."""
    year_10000 = 253_402_300_800_000 + 3_599_000
    assert to_datetime(year_10000) == datetime(9999, 12, 31, 23, 59, 59, 999000, UTC)
    assert to_datetime(1_700_000_000_123) == datetime(2023, 11, 14, 22, 13, 20, 123000, UTC)


def test_a_deadline_at_or_before_the_epoch_is_never_in_the_future() -> None:
    # 0 means "no deadline" to the scripts: it must never be sent as one.
    for moment in (datetime(1970, 1, 1, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC)):
        with pytest.raises(ValueError, match="future"):
            rules.deadline_ms(moment)


def test_a_ttl_of_a_century_at_most() -> None:
    item = msgspec.json.decode(
        b'{"slug": "A", "ttl_seconds": %d}' % rules.MAX_TTL_SECONDS, type=AddItem
    )
    assert item.ttl_seconds == rules.MAX_TTL_SECONDS
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"slug": "A", "ttl_seconds": %d}' % (rules.MAX_TTL_SECONDS + 1), type=AddItem
        )


# --- percent -----------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10_000))
def test_every_two_decimal_percent_is_exact(x100: int) -> None:
    assert rules.percent_x100(x100 / 100) == x100
    assert rules.parse_percent_text(str(x100 / 100)) * 100 == x100


@pytest.mark.parametrize(
    "value", [99.999999999, 12.345, 0.001, 0.0, -1.0, 100.01, 1e-300, 0.35000000000000003]
)
def test_percent_with_more_than_two_decimals_or_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValueError):
        rules.percent_x100(value)
    body = msgspec.json.encode({"slug": "A", "percent": value})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body, type=SegmentCreate)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode({"percent": value}), type=SegmentPatch)


@pytest.mark.parametrize("text", ["0", "100.01", "1.005", "NaN", "Infinity", "abc", "-5"])
def test_percent_text_refused(text: str) -> None:
    with pytest.raises(ValueError):
        rules.parse_percent_text(text)


# --- free text ---------------------------------------------------------------------


def test_a_description_with_a_nul_is_refused() -> None:
    assert not rules.is_storable_text("a\x00b")
    assert rules.is_storable_text("line\nbreak, é, \u2603")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"slug": "A", "description": "a\\u0000b"}', type=SegmentCreate)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"description": "\\u0000"}', type=SegmentPatch)
    ok = msgspec.json.decode(b'{"slug": "A", "description": "two\\nlines"}', type=SegmentCreate)
    assert ok.description == "two\nlines"


def test_a_lone_surrogate_never_reaches_the_store() -> None:
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        msgspec.json.decode(b'{"slug": "A", "description": "\\ud800"}', type=SegmentCreate)


# --- one definition each -----------------------------------------------------------

RUNTIME = ["segments_core", "service", "archiver", "segments_cli"]
COPIES = {
    "the largest user id": re.compile(r"2\s*\*\*\s*63|9223372036854775807|0x7fff_?ffff"),
    "the slug pattern": re.compile(r"\[A-Za-z0-9\]\[A-Za-z0-9_\.-\]"),
    "the period pattern": re.compile(r"0\[1-9\]\|1\[0-2\]"),
    "a century of seconds": re.compile(r"100\s*\*\s*365"),
}


def test_no_runtime_module_copies_a_rule() -> None:
    """Each rule lives in segments_core/rules.py only (the Lua scripts check
    their own arguments in their own language, and are not Python modules)."""
    found = []
    for package in RUNTIME:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "segments_core" / "rules.py":
                continue
            text = path.read_text()
            found += [
                f"{path.relative_to(ROOT)}: {name}" for name, p in COPIES.items() if p.search(text)
            ]
    assert found == []
