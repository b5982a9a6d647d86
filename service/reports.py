"""History reports: what to report, signed links to it, and the CSV itself.

No HTTP here (``service/api/history.py`` is the edge):

- ``ReportQuery``: a month, optionally one user and/or one segment;
- ``sign`` / ``verify``: the HMAC over a link's parameters and expiry;
- ``wait_until_archived``: holds a report request until every event that
  existed when it came is in PostgreSQL (see ``segments_core.streams`` for why the
  consumer group tells exactly that);
- ``stream_csv``: the rows from PostgreSQL by ``COPY ... TO STDOUT`` in
  chunks, never the whole report in memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
from collections.abc import AsyncGenerator, Mapping
from urllib.parse import urlencode

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from segments_core import rules
from segments_core.streams import AnyRedis, EntryId, GroupState, group_state, last_generated_ids
from service.errors import DomainError

MAX_EXPIRES = 10**12
"""Expiry of a link, unix seconds: far beyond any TTL; a longer number is no
link of ours (and Python refuses to read numbers of 4,301 digits or more)."""

CSV_HEADER = "user_id,segment,operation,timestamp,reason"
CHUNK_BYTES = 64 * 1024
"""Rows are sent in chunks of about this size: big enough that per-chunk costs
(an ASGI message, a socket write) vanish, small enough to keep memory flat."""
POLL_S = 0.02
"""Interval between two looks at the consumer group while a report waits."""
_SIGNATURE_VERSION = b"segments-report-v1"


class BadReportRequest(DomainError):
    status_code = 400


class LinkRejected(DomainError):
    """A report link whose signature does not match, or that has expired."""

    status_code = 403


class ArchiverBehind(DomainError):
    """The archiver did not catch up within the wait; try again after ``retry_after_s``."""

    status_code = 503

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "the history archiver is behind; retry shortly", {"retry_after_s": retry_after_s}
        )
        self.retry_after_s = retry_after_s


class ReportQuery(msgspec.Struct, frozen=True, kw_only=True):
    period: str
    """A UTC month, ``YYYY-MM``."""
    user_id: int | None = None
    segment: str | None = None

    @classmethod
    def parse(
        cls, period: str, user_id: int | str | None = None, segment: str | None = None
    ) -> ReportQuery:
        """The query, every part checked by ``segments_core.rules``; ``BadReportRequest``
        if one is not valid (a user id as text must be in canonical form)."""
        if rules.parse_period(period) is None:
            raise BadReportRequest("period must be a month, YYYY-MM, from 1970-01 to 9999-12")
        if isinstance(user_id, str):
            user_id = rules.parse_user_id(user_id)
            if user_id is None:
                raise BadReportRequest("user_id must be an integer from 1 to 2^63-1")
        if user_id is not None and not rules.is_user_id(user_id):
            raise BadReportRequest("user_id must be an integer from 1 to 2^63-1")
        if segment is not None and not rules.is_slug(segment):
            raise BadReportRequest("segment must be a slug")
        return cls(period=period, user_id=user_id, segment=segment)

    @property
    def bounds_ms(self) -> tuple[int, int]:
        """The month as ms since the epoch: first, and one past the last.

        Integers, not datetimes: the end of 9999-12 is in the year 10000."""
        year, month = rules.parse_period(self.period) or (0, 0)
        return rules.period_bounds_ms(year, month)

    @property
    def filename(self) -> str:
        # Slugs hold only [A-Za-z0-9_.-]: safe in a header and on any file system.
        parts = ["segments-history", self.period]
        if self.user_id is not None:
            parts.append(f"user-{self.user_id}")
        if self.segment is not None:
            parts.append(f"segment-{self.segment}")
        return "_".join(parts) + ".csv"


# -- signed links -----------------------------------------------------------------------------


def _message(query: ReportQuery, expires: int) -> bytes:
    # Every field on its own line, absent ones empty: no two different
    # queries can produce the same message (a slug holds no newline).
    fields = (
        _SIGNATURE_VERSION,
        query.period.encode(),
        b"" if query.user_id is None else str(query.user_id).encode(),
        b"" if query.segment is None else query.segment.encode(),
        str(expires).encode(),
    )
    return b"\n".join(fields)


def sign(key: bytes, query: ReportQuery, expires: int) -> str:
    """URL-safe HMAC-SHA256 of the query and its expiry (unix seconds)."""
    digest = hmac.new(key, _message(query, expires), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def link_params(key: bytes, query: ReportQuery, expires: int) -> dict[str, str]:
    """The query string of a signed link, in a fixed order."""
    params = {"period": query.period}
    if query.user_id is not None:
        params["user_id"] = str(query.user_id)
    if query.segment is not None:
        params["segment"] = query.segment
    params["expires"] = str(expires)
    params["sig"] = sign(key, query, expires)
    return params


def verify(
    key: bytes, query_string: str | Mapping[str, str | None], now: float | None = None
) -> ReportQuery:
    """The query a link was signed for; ``LinkRejected`` if altered or expired.

    The link's query string must be exactly the one ``link_params`` wrote for
    it, byte for byte: the same parameters, once each, in the same order, in
    the same spelling. So a link altered in any way, even one that would
    read the same (``expires`` with a leading zero or other digits,
    ``user_id=42%0A``, a second ``segment=``), is a 403 whatever its size,
    and so is any malformed one (never a 400 that tells what was wrong: a
    link is only ever produced by ``link_params``). A mapping is taken as the
    query string it encodes to, in its order.
    """
    if not isinstance(query_string, str):
        query_string = urlencode({k: v for k, v in query_string.items() if v is not None})
    fields = dict(_pairs(query_string))
    period, expires_text = fields.get("period"), fields.get("expires")
    expires = rules.canonical_int(expires_text or "", MAX_EXPIRES)
    if period is None or expires is None:
        raise LinkRejected("invalid report link")
    try:
        query = ReportQuery.parse(period, fields.get("user_id"), fields.get("segment"))
    except BadReportRequest:
        raise LinkRejected("invalid report link") from None
    expected = urlencode(link_params(key, query, expires))
    # Constant time over the whole query string: the signature is part of it.
    if not hmac.compare_digest(expected.encode(), query_string.encode("utf-8", "replace")):
        raise LinkRejected("invalid report link")
    if expires <= (time.time() if now is None else now):
        raise LinkRejected("report link expired")
    return query


def _pairs(query_string: str) -> list[tuple[str, str]]:
    # Plain split, no decoding: a signed link holds no escapes at all (every
    # value is digits, slug characters or URL-safe base64), so anything
    # escaped fails the comparison with the canonical form anyway.
    pairs = []
    for part in query_string.split("&")[:8]:
        name, _, value = part.partition("=")
        pairs.append((name, value))
    return pairs


# -- waiting for the archiver -----------------------------------------------------------------


class WaitResult(msgspec.Struct, frozen=True, kw_only=True):
    caught_up: bool
    waited_s: float
    behind_s: float
    """Worst age of an event still waiting, when not caught up (0 otherwise)."""


async def wait_until_archived(
    redis: AnyRedis, streams: list[str], timeout_s: float, poll_s: float = POLL_S
) -> WaitResult:
    """Wait until every history event appended before this call is archived.

    Targets are each stream's last generated id, read now: an API call that
    returned before has its events at or below them.
    """
    started = time.monotonic()
    targets = {s: t for s, t in (await last_generated_ids(redis, streams)).items() if t != (0, 0)}
    states: list[GroupState] = []
    while True:
        states = list(await asyncio.gather(*(group_state(redis, s) for s in targets)))
        targets = {
            st.stream: targets[st.stream]
            for st in states
            if not st.archived_through(targets[st.stream])
        }
        waited = time.monotonic() - started
        if not targets:
            return WaitResult(caught_up=True, waited_s=waited, behind_s=0.0)
        if waited >= timeout_s:
            return WaitResult(caught_up=False, waited_s=waited, behind_s=_behind_s(targets))
        await asyncio.sleep(min(poll_s, max(0.0, timeout_s - waited)))


def _behind_s(targets: dict[str, EntryId]) -> float:
    oldest_ms = min(t[0] for t in targets.values())
    return max(0.0, time.time() - oldest_ms / 1000)


def retry_after_s(result: WaitResult) -> int:
    """A Retry-After hint: about as long as the archiver is behind, 1 to 30 s."""
    return max(1, min(30, math.ceil(result.behind_s)))


# -- the CSV ------------------------------------------------------------------------------------

# RFC 3339 in UTC with milliseconds, the precision events are stamped with.
# The month's bounds are milliseconds turned into timestamps by interval
# arithmetic, as the archiver writes them (exact, and fine in the year 10000).
_REPORT = sql.SQL(
    "COPY (SELECT user_id, segment, operation,"
    ' to_char(ts AT TIME ZONE \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') AS "timestamp",'
    " reason"
    " FROM history WHERE ts >= {start} AND ts < {end}{filters}"
    # Time, then the stream entry id: one user's events all sit in one
    # stream, so for them this is the order the scripts ran in (SPEC §3).
    " ORDER BY ts, stream, entry_ms, entry_seq"
    ") TO STDOUT (FORMAT csv, HEADER)"
)
_AT_MS = "timestamptz 'epoch' + {} * interval '1 millisecond'"


def report_sql(query: ReportQuery) -> sql.Composed:
    filters: list[sql.Composable] = []
    if query.user_id is not None:
        filters.append(sql.SQL(" AND user_id = {}").format(sql.Literal(query.user_id)))
    if query.segment is not None:
        filters.append(sql.SQL(" AND segment = {}").format(sql.Literal(query.segment)))
    start_ms, end_ms = query.bounds_ms
    return _REPORT.format(
        start=sql.SQL(_AT_MS).format(sql.Literal(start_ms)),
        end=sql.SQL(_AT_MS).format(sql.Literal(end_ms)),
        filters=sql.Composed(filters),
    )


async def stream_csv(
    pool: AsyncConnectionPool, query: ReportQuery, chunk_bytes: int = CHUNK_BYTES
) -> AsyncGenerator[bytes, None]:
    """The report as CSV chunks (RFC 4180: CRLF line ends), first the header.

    PostgreSQL writes the CSV (``COPY ... TO STDOUT``) and ends lines with LF;
    no field can hold a line break (ids, slugs, fixed words, timestamps), so
    turning every LF into CRLF is exact. Each chunk is at most a little over
    ``chunk_bytes``: memory stays flat whatever the report's size.
    """
    async with pool.connection() as conn:
        cur = conn.cursor()
        async with cur.copy(report_sql(query)) as copy:
            parts: list[bytes] = []
            size = 0
            async for row in copy:
                parts.append(bytes(row))
                size += len(row)
                if size >= chunk_bytes:
                    yield b"".join(parts).replace(b"\n", b"\r\n")
                    parts.clear()
                    size = 0
            if parts:
                yield b"".join(parts).replace(b"\n", b"\r\n")
