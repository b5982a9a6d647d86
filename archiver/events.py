"""Stream entries -> rows for PostgreSQL: checked field by field, pure.

The stream contract is in docs/design.md ("History events"). An entry that
breaks it raises ``EntryError`` with the reason; the worker sends such an
entry to the dead-letter stream, since no retry can make it valid.

Membership rows are produced directly as lines of PostgreSQL's COPY text
format: every field was checked to hold only digits, slug characters or a
known word, so none needs escaping, and the hot path builds no objects.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import msgspec

from segments_core import rules

MIN_TS_MS = 946_684_800_000
"""2000-01-01: no event of this service is older; an older timestamp is a bug."""
FUTURE_SLACK_MS = 86_400_000
"""Events carry the Redis server's clock, the archiver's host may differ: one
day of skew is tolerated, more is a bug (and would create partitions far ahead)."""

_OPERATIONS = frozenset((b"add", b"remove"))
_REASONS = frozenset((b"manual", b"ttl", b"percent", b"segment_deleted", b"user_deleted"))
_LIFECYCLE = frozenset(("created", "changed", "deleted"))
_NULL = b"\\N"

MEMBERSHIP_COLUMNS = (
    "stream",
    "entry_ms",
    "entry_seq",
    "user_id",
    "segment",
    "operation",
    "ts_ms",
    "reason",
    "deadline_ms",
)
"""Column order of the lines ``membership_line`` builds (the staging table's)."""


class EntryError(ValueError):
    """The entry does not follow the stream contract; the message says how."""


class Row(msgspec.Struct, frozen=True):
    """One entry ready for PostgreSQL."""

    entry_id: bytes
    ms: int
    seq: int
    ts_ms: int
    payload: bytes | tuple[Any, ...]
    """A COPY text line (memberships) or a tuple for ``write_row`` (lifecycle)."""


def split_id(entry_id: bytes) -> tuple[int, int]:
    ms, sep, seq = entry_id.partition(b"-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise EntryError(f"bad entry id {entry_id!r}")
    return int(ms), int(seq)


def _digits(fields: dict[bytes, bytes], name: bytes) -> bytes:
    value = fields.get(name)
    if value is None:
        raise EntryError(f"field {name.decode()!r} missing")
    if not value.isdigit() or len(value) > 19:
        raise EntryError(f"field {name.decode()!r} is not a non-negative integer: {value!r}")
    return value


def _timestamp(fields: dict[bytes, bytes], name: bytes, now_ms: int) -> int:
    ts = int(_digits(fields, name))
    if not MIN_TS_MS <= ts <= now_ms + FUTURE_SLACK_MS:
        raise EntryError(f"field {name.decode()!r} out of range: {ts}")
    return ts


def _slug(fields: dict[bytes, bytes]) -> bytes:
    slug = fields.get(b"s")
    if slug is None or not rules.is_slug(slug):
        raise EntryError(f"field 's' is not a slug: {slug!r}")
    return slug


def membership_row(stream: bytes, entry_id: bytes, fields: dict[bytes, bytes], now_ms: int) -> Row:
    """A membership event (``u s o t r [d]``) as a COPY line for ``history_staging``.

    The hot path of the archiver: checks are inlined, fields reused as bytes.
    """
    try:
        user, slug, operation = fields[b"u"], fields[b"s"], fields[b"o"]
        ts_raw, reason = fields[b"t"], fields[b"r"]
    except KeyError as exc:
        raise EntryError(f"field {exc.args[0].decode()!r} missing") from None
    ms, sep, seq = entry_id.partition(b"-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise EntryError(f"bad entry id {entry_id!r}")
    if rules.parse_user_id(user) is None:
        raise EntryError(f"field 'u' is not a user id: {user!r}")
    if not rules.is_slug(slug):
        raise EntryError(f"field 's' is not a slug: {slug!r}")
    if operation not in _OPERATIONS:
        raise EntryError(f"field 'o' must be add or remove, got {operation!r}")
    if reason not in _REASONS:
        raise EntryError(f"field 'r' is not a known reason: {reason!r}")
    if not ts_raw.isdigit() or len(ts_raw) > 19:
        raise EntryError(f"field 't' is not a non-negative integer: {ts_raw!r}")
    ts = int(ts_raw)
    if not MIN_TS_MS <= ts <= now_ms + FUTURE_SLACK_MS:
        raise EntryError(f"field 't' out of range: {ts}")
    # A deadline may lie far ahead (that is its point), so only its form is checked.
    deadline = fields.get(b"d", _NULL)
    if deadline is not _NULL and (not deadline.isdigit() or len(deadline) > 19):
        raise EntryError(f"field 'd' is not a non-negative integer: {deadline!r}")
    line = b"%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" % (
        stream,
        ms,
        seq,
        user,
        slug,
        operation,
        ts_raw,
        reason,
        deadline,
    )
    return Row(entry_id, int(ms), int(seq), ts, line)


def _percent(raw: bytes | None) -> Decimal | None:
    if raw is None or raw == b"":
        return None
    try:
        return rules.parse_percent_text(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise EntryError(f"field 'p' is not a percent with two decimals at most: {raw!r}") from None


def lifecycle_row(stream: bytes, entry_id: bytes, fields: dict[bytes, bytes], now_ms: int) -> Row:
    """A segment lifecycle event (``o s t p desc id``) as a tuple for ``segment_events``."""
    ms, seq = split_id(entry_id)
    raw_operation = fields.get(b"o", b"")
    operation = raw_operation.decode("ascii", "replace")
    if operation not in _LIFECYCLE:
        raise EntryError(f"field 'o' must be created, changed or deleted, got {raw_operation!r}")
    slug = _slug(fields).decode("ascii")
    ts = _timestamp(fields, b"t", now_ms)
    segment_id = int(_digits(fields, b"id"))
    raw_description = fields.get(b"desc")
    try:
        description = None if raw_description is None else raw_description.decode("utf-8")
    except UnicodeDecodeError:
        raise EntryError("field 'desc' is not UTF-8") from None
    if description is not None and not rules.is_storable_text(description):
        raise EntryError("field 'desc' holds a NUL character")  # PostgreSQL text cannot
    row = (
        stream.decode("ascii"),
        ms,
        seq,
        ts,
        slug,
        segment_id,
        operation,
        _percent(fields.get(b"p")),
        description,
    )
    return Row(entry_id, ms, seq, ts, row)


def now_ms() -> int:
    return time.time_ns() // 1_000_000
