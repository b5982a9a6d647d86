"""``GET /api/v1/changes``: the change feed as Server-Sent Events (SPEC §4).

The handler checks the filters and the ``Last-Event-ID`` before answering,
so a bad filter is a 400 and Redis being down a 503; then it streams what
``service.feed`` produces for this subscriber. Read scope: the app's token
guard lets a GET through with a read (or write) token.
"""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter
from litestar.response import Stream

from segments_core import rules
from service.api.params import optional_user_id
from service.feed import EventFilter, FeedHub, FeedSession, resume_point
from service.models import SLUG_PATTERN, ErrorBody

CHANGES_PATH = "/api/v1/changes"


@get(
    CHANGES_PATH,
    summary="Membership and segment changes as they happen (Server-Sent Events)",
    description=(
        "`event: change` (data `{user_id, segment, operation, timestamp, reason,"
        " expires_at}`), `event: segment` (data `{slug, action, percent, timestamp}`),"
        " each with an opaque cursor as `id`. Reconnect with `Last-Event-ID` to get"
        " every event after it, none twice, within the retention window; an unknown or"
        " too-old cursor gets `event: reset` first (re-read what you cache), then live"
        " events. A comment line with the current cursor as `id` follows the replay and"
        " every 15 s without events. One user's events come in order."
    ),
    tags=["changes"],
    media_type="text/event-stream",
    responses={
        503: ResponseSpec(ErrorBody, description="Redis unavailable; retry after Retry-After"),
    },
)
async def changes(
    feed: NamedDependency[FeedHub],
    last_event_id: Annotated[
        str | None,
        HeaderParameter(
            name="Last-Event-ID",
            required=False,
            max_length=4096,
            description="Cursor of the last event received (the `id` of an event)",
        ),
    ] = None,
    segment: Annotated[
        str | None,
        QueryParameter(
            required=False,
            pattern=SLUG_PATTERN,
            min_length=1,
            max_length=100,
            description="Only events of this segment",
        ),
    ] = None,
    user_id: Annotated[
        str | None,
        QueryParameter(
            required=False,
            description="Only this user's membership events (no segment events)",
            schema_extra=rules.USER_ID_SCHEMA,
        ),
    ] = None,
) -> Stream:
    if not feed.ready:
        raise ServiceUnavailableException(
            detail="change feed unavailable, retry shortly", headers={"Retry-After": "1"}
        )
    event_filter = EventFilter(segment=segment, user_id=optional_user_id(user_id))
    resume = await resume_point(feed, event_filter, last_event_id)
    return Stream(
        FeedSession(feed, event_filter, resume).blocks(),
        media_type="text/event-stream",
        # No caching, and no buffering by a proxy (nginx) in between.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


ROUTES = [changes]
