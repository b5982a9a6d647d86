"""Request and response bodies of the HTTP API (msgspec Structs).

Validation of slugs, user ids, percents and deadlines happens here, at the
edge, before Redis is touched: a body that decodes is one the domain can
apply.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar

from msgspec import UNSET, Meta, Struct, UnsetType

from segments_core import rules
from segments_core.rules import MAX_USER_ID, SLUG_PATTERN, percent_x100

Slug = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=rules.SLUG_MAX_LENGTH,
        pattern=SLUG_PATTERN,
        description="Segment slug: 1-100 characters, letters, digits, _ . - ; case sensitive",
        examples=["AVITO_DISCOUNT_30"],
    ),
]
UserId = Annotated[
    int,
    Meta(ge=rules.MIN_USER_ID, le=MAX_USER_ID, description="User id, 1 .. 2^63-1"),
]
Description = Annotated[
    str,
    Meta(
        max_length=rules.DESCRIPTION_MAX_LENGTH,
        pattern=rules.DESCRIPTION_PATTERN,
        description="Free text, up to 1,000 characters, no NUL character",
    ),
]
Percent = Annotated[
    float,
    Meta(
        gt=0,
        le=rules.PERCENT_MAX,
        description="Share of all users, 0 < p <= 100, two decimals at most",
        # msgspec's own multiple_of check is exact arithmetic on doubles
        # (0.07 is no multiple of 0.01 there): the schema states the step,
        # rules.percent_x100 enforces it.
        extra_json_schema={"multipleOf": rules.PERCENT_STEP},
    ),
]
TtlSeconds = Annotated[int, Meta(gt=0, le=rules.MAX_TTL_SECONDS)]


class SegmentCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    slug: Slug
    description: Description = ""
    percent: Percent | None = None

    def __post_init__(self) -> None:
        if self.percent is not None:
            percent_x100(self.percent)


class SegmentPatch(Struct, kw_only=True, forbid_unknown_fields=True):
    description: Description | UnsetType = UNSET
    percent: Percent | UnsetType | None = UNSET
    """null ends the rollout; absent leaves it as it is."""

    def __post_init__(self) -> None:
        if isinstance(self.percent, float):
            percent_x100(self.percent)


class SegmentOut(Struct, kw_only=True):
    slug: str
    description: str
    percent: float | None
    created_at: datetime
    members: int


class SegmentList(Struct, kw_only=True):
    segments: list[SegmentOut]


class UsersCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=10_000)]


class UsersCreated(Struct, kw_only=True):
    created: int


class AddItem(Struct, kw_only=True, forbid_unknown_fields=True):
    __schema_rules__: ClassVar[dict[str, Any]] = {
        "not": {
            "required": ["ttl_seconds", "expires_at"],
            "properties": {"ttl_seconds": {"type": "integer"}, "expires_at": {"type": "string"}},
        }
    }
    """What ``__post_init__`` enforces, for the OpenAPI schema (``service.openapi``)."""

    slug: Slug
    ttl_seconds: TtlSeconds | None = None
    expires_at: Annotated[datetime, Meta(tz=True)] | None = None

    def __post_init__(self) -> None:
        if self.ttl_seconds is not None and self.expires_at is not None:
            raise ValueError("give ttl_seconds or expires_at, not both")
        if self.expires_at is not None:
            rules.deadline_ms(self.expires_at)  # bounded: every deadline reads back


class ChangeRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    # uniqueItems in the schema: the same slug twice is refused. (A slug in
    # both lists is refused too; JSON Schema cannot say that one.)
    add: Annotated[
        list[Slug | AddItem], Meta(max_length=1000, extra_json_schema={"uniqueItems": True})
    ] = []
    remove: Annotated[
        list[Slug], Meta(max_length=1000, extra_json_schema={"uniqueItems": True})
    ] = []

    def __post_init__(self) -> None:
        added = [item if isinstance(item, str) else item.slug for item in self.add]
        if len(set(added)) != len(added):
            raise ValueError("a slug appears twice in add")
        if len(set(self.remove)) != len(self.remove):
            raise ValueError("a slug appears twice in remove")
        both = sorted(set(added) & set(self.remove))
        if both:
            raise ValueError(f"slug(s) in both add and remove: {', '.join(both)}")


class UserSegments(Struct, kw_only=True):
    user_id: int
    segments: list[str]


class ExpandedMembership(Struct, kw_only=True):
    slug: str
    expires_at: datetime | None


class UserSegmentsExpanded(Struct, kw_only=True):
    user_id: int
    segments: list[ExpandedMembership]


class LookupRequest(Struct, kw_only=True, forbid_unknown_fields=True):
    user_ids: Annotated[list[UserId], Meta(min_length=1, max_length=1000)]


class LookupResponse(Struct, kw_only=True):
    users: list[UserSegments]


class ErrorBody(Struct, kw_only=True):
    status_code: int
    detail: str
    extra: dict[str, list[str] | str] | None = None
