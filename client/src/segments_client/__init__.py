"""Python client of the Segments service (SPEC §8).

``Client`` (blocking) and ``AsyncClient`` (asyncio) call every endpoint of
the API; with ``cache=True`` they answer repeated lookups from memory kept
fresh by the change feed. See README.md for the guarantees.
"""

from segments_client._calls import UNSET
from segments_client.aio import AsyncClient
from segments_client.client import Client
from segments_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    SegmentsError,
    ServerError,
    Unauthorized,
    Unavailable,
)
from segments_client.models import (
    AddItem,
    CacheStats,
    ChangeEvent,
    FeedEvent,
    Membership,
    ReportLink,
    ResetEvent,
    Segment,
    SegmentEvent,
)

__all__ = [
    "UNSET",
    "AddItem",
    "AsyncClient",
    "BadRequest",
    "CacheStats",
    "ChangeEvent",
    "Client",
    "Conflict",
    "FeedEvent",
    "Forbidden",
    "Membership",
    "NotFound",
    "PayloadTooLarge",
    "ReportLink",
    "ResetEvent",
    "Segment",
    "SegmentEvent",
    "SegmentsError",
    "ServerError",
    "Unauthorized",
    "Unavailable",
]
