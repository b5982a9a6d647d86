"""What the service answers, as small immutable values (plain dataclasses, no dependency)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp of the service (``...Z``) as an aware datetime."""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # fromisoformat of Python 3.10 wants an offset
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _time_or_none(value: Any) -> datetime | None:
    return parse_time(value) if isinstance(value, str) else None


@dataclass(frozen=True)
class Segment:
    slug: str
    description: str
    percent: float | None
    created_at: datetime
    members: int
    """Users in the segment when the answer was made."""

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Segment:
        return cls(
            slug=doc["slug"],
            description=doc["description"],
            percent=doc["percent"],
            created_at=parse_time(doc["created_at"]),
            members=int(doc["members"]),
        )


@dataclass(frozen=True)
class Membership:
    slug: str
    expires_at: datetime | None
    """The deadline; None for a membership without one."""


@dataclass(frozen=True)
class AddItem:
    """An add of ``change()`` with a deadline: ``ttl_seconds`` or ``expires_at``, not both.

    A plain slug string is an add without a deadline.
    """

    slug: str
    ttl_seconds: int | None = None
    expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"slug": self.slug}
        if self.ttl_seconds is not None:
            doc["ttl_seconds"] = self.ttl_seconds
        if self.expires_at is not None:
            if self.expires_at.tzinfo is None:
                raise ValueError("expires_at needs a time zone")
            doc["expires_at"] = self.expires_at.isoformat()
        return doc


@dataclass(frozen=True)
class ReportLink:
    url: str
    """Signed link to the CSV; works without a token until ``expires_at``."""
    expires_at: datetime


# -- change feed events ---------------------------------------------------------------


@dataclass(frozen=True)
class ChangeEvent:
    """A membership began or ended (``event: change``)."""

    user_id: int
    segment: str
    operation: str
    """``add`` or ``remove``."""
    timestamp: datetime
    reason: str
    """``manual``, ``ttl``, ``percent``, ``segment_deleted`` or ``user_deleted``."""
    expires_at: datetime | None
    cursor: str
    """Resume after this event: pass it as ``last_event_id``."""


@dataclass(frozen=True)
class SegmentEvent:
    """A segment was created, changed or deleted (``event: segment``)."""

    slug: str
    action: str
    percent: float | None
    timestamp: datetime
    cursor: str


@dataclass(frozen=True)
class ResetEvent:
    """The cursor could not be resumed: events were missed, re-read what you keep."""

    reason: str
    cursor: str


FeedEvent = ChangeEvent | SegmentEvent | ResetEvent


def feed_event(kind: str, data: dict[str, Any], cursor: str) -> FeedEvent | None:
    """The typed event of an SSE message; None for a kind this client does not know."""
    if kind == "change":
        return ChangeEvent(
            user_id=int(data["user_id"]),
            segment=data["segment"],
            operation=data["operation"],
            timestamp=parse_time(data["timestamp"]),
            reason=data["reason"],
            expires_at=_time_or_none(data.get("expires_at")),
            cursor=cursor,
        )
    if kind == "segment":
        return SegmentEvent(
            slug=data["slug"],
            action=data["action"],
            percent=data.get("percent"),
            timestamp=parse_time(data["timestamp"]),
            cursor=cursor,
        )
    if kind == "reset":
        return ResetEvent(reason=str(data.get("reason", "")), cursor=cursor)
    return None


@dataclass(frozen=True)
class CacheStats:
    """``stats()``: what the cache did since the client opened."""

    hits: int
    misses: int
    entries: int
    evictions: int
    """Entries dropped to stay within ``max_entries`` (least recently used first)."""
    invalidations: int
    """Entries dropped because an event (or an own change) touched them."""
    feed_connected: bool
    """The feed is connected and caught up: only then is anything served from memory."""
    feed_lag_s: float | None
    """For the last change event: how long after the change it reached this client
    (clocks of this host and the API's; ``ttl`` events are left out)."""
    reconnects: int
    resets: int
