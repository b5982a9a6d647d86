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
import datetime as dt
import hashlib
import hmac
import math
import re
import time
from collections.abc import AsyncGenerator, Mapping

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from segments_core.streams import AnyRedis, EntryId, GroupState, group_state, last_generated_ids
from service.errors import DomainError

MAX_USER_ID = 2**63 - 1
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"
SLUG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_PERIOD = re.compile(PERIOD_PATTERN)
_SLUG = re.compile(SLUG_PATTERN)
_DIGITS = re.compile(r"^[1-9][0-9]{0,18}$")

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
        if not _PERIOD.match(period) or period < "1970-01":
            raise BadReportRequest("period must be a month, YYYY-MM (1970-01 or later)")
        if isinstance(user_id, str):
            if not _DIGITS.match(user_id):
                raise BadReportRequest("user_id must be an integer from 1 to 2^63-1")
            user_id = int(user_id)
        if user_id is not None and not 0 < user_id <= MAX_USER_ID:
            raise BadReportRequest("user_id must be an integer from 1 to 2^63-1")
        if segment is not None and not _SLUG.match(segment):
            raise BadReportRequest("segment must be a slug")
        return cls(period=period, user_id=user_id, segment=segment)

    @property
    def start(self) -> dt.datetime:
        year, month = map(int, self.period.split("-"))
        return dt.datetime(year, month, 1, tzinfo=dt.UTC)

    @property
    def end(self) -> dt.datetime:
        start = self.start
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)

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


def verify(key: bytes, params: Mapping[str, str | None], now: float | None = None) -> ReportQuery:
    """The query a link's parameters were signed for; ``LinkRejected`` if tampered or expired.

    Any malformed parameter is a rejected link too (403, not 400): a link is
    only ever produced by ``link_params``.
    """
    period, expires, signature = params.get("period"), params.get("expires"), params.get("sig")
    if not period or not expires or not signature or not expires.isdigit():
        raise LinkRejected("invalid report link")
    try:
        query = ReportQuery.parse(period, params.get("user_id"), params.get("segment"))
    except BadReportRequest:
        raise LinkRejected("invalid report link") from None
    expected = sign(key, query, int(expires))
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise LinkRejected("invalid report link")
    if int(expires) <= (time.time() if now is None else now):
        raise LinkRejected("report link expired")
    return query


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
_REPORT = sql.SQL(
    "COPY (SELECT user_id, segment, operation,"
    ' to_char(ts AT TIME ZONE \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') AS "timestamp",'
    " reason"
    " FROM history WHERE ts >= {start} AND ts < {end}{filters}"
    # The event key breaks ties, so a report is the same every time it is run.
    " ORDER BY ts, stream, entry_ms, entry_seq"
    ") TO STDOUT (FORMAT csv, HEADER)"
)


def report_sql(query: ReportQuery) -> sql.Composed:
    filters: list[sql.Composable] = []
    if query.user_id is not None:
        filters.append(sql.SQL(" AND user_id = {}").format(sql.Literal(query.user_id)))
    if query.segment is not None:
        filters.append(sql.SQL(" AND segment = {}").format(sql.Literal(query.segment)))
    return _REPORT.format(
        start=sql.Literal(query.start),
        end=sql.Literal(query.end),
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
