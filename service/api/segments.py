"""/api/v1/segments: create, read, change and delete segments."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from msgspec import UNSET

from segments_core.clock import to_datetime
from service.models import (
    SLUG_PATTERN,
    ErrorBody,
    SegmentCreate,
    SegmentList,
    SegmentOut,
    SegmentPatch,
    percent_x100,
)
from service.store import Segment, Store

PathSlug = Annotated[str, Parameter(pattern=SLUG_PATTERN, min_length=1, max_length=100)]
NOT_FOUND = {404: ResponseSpec(ErrorBody, description="No such segment")}


def segment_out(segment: Segment) -> SegmentOut:
    return SegmentOut(
        slug=segment.slug,
        description=segment.description,
        percent=segment.percent_x100 / 100 if segment.percent_x100 else None,
        created_at=to_datetime(segment.created_at_ms),
        members=segment.members,
    )


class SegmentController(Controller):
    path = "/api/v1/segments"
    tags = ["segments"]

    @post(
        "/",
        summary="Create a segment",
        description="With `percent`, every known user of the cohort joins at once "
        "(history reason `percent`), and every user who becomes known later joins "
        "when they fall in the cohort.",
        responses={409: ResponseSpec(ErrorBody, description="The slug exists")},
    )
    async def create(self, data: SegmentCreate, store: NamedDependency[Store]) -> SegmentOut:
        pct = percent_x100(data.percent) if data.percent is not None else 0
        return segment_out(await store.create_segment(data.slug, data.description, pct))

    @get("/", summary="All segments, sorted by slug")
    async def list_all(self, store: NamedDependency[Store]) -> SegmentList:
        return SegmentList(segments=[segment_out(s) for s in await store.list_segments()])

    @get("/{slug:str}", summary="One segment", responses=NOT_FOUND)
    async def read(self, slug: PathSlug, store: NamedDependency[Store]) -> SegmentOut:
        return segment_out(await store.get_segment(slug))

    @patch(
        "/{slug:str}",
        summary="Change a segment's description or percent",
        description="Raising `percent` adds the newly covered users and keeps earlier "
        "ones; lowering it (or `null`) removes the users the percentage added who fall "
        "outside. Users added by hand are never touched.",
        responses=NOT_FOUND,
    )
    async def change(
        self, slug: PathSlug, data: SegmentPatch, store: NamedDependency[Store]
    ) -> SegmentOut:
        percent = None
        if data.percent is not UNSET:
            percent = percent_x100(data.percent) if data.percent is not None else 0
        description = None if data.description is UNSET else data.description
        return segment_out(
            await store.update_segment(slug, description=description, percent_x100=percent)
        )

    @delete(
        "/{slug:str}",
        summary="Delete a segment",
        description="Every member leaves (history reason `segment_deleted`) before this "
        "returns; the slug can be created again and starts empty.",
        responses=NOT_FOUND,
    )
    async def remove(self, slug: PathSlug, store: NamedDependency[Store]) -> None:
        await store.delete_segment(slug)
