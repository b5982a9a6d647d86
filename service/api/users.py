"""/api/v1/users: known users, their segments, and batch lookups."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from segments_core import rules
from segments_core.clock import to_datetime
from service.api.params import PathUserId, user_id_of
from service.models import (
    ChangeRequest,
    ErrorBody,
    ExpandedMembership,
    LookupRequest,
    LookupResponse,
    UsersCreate,
    UsersCreated,
    UserSegments,
    UserSegmentsExpanded,
)
from service.store import AddItem, Membership, Store


def expanded(user_id: int, memberships: list[Membership]) -> UserSegmentsExpanded:
    return UserSegmentsExpanded(
        user_id=user_id,
        segments=[
            ExpandedMembership(
                slug=m.slug, expires_at=to_datetime(m.deadline_ms) if m.deadline_ms else None
            )
            for m in memberships
        ],
    )


def plain(user_id: int, memberships: list[Membership]) -> UserSegments:
    return UserSegments(user_id=user_id, segments=[m.slug for m in memberships])


async def apply_change(store: Store, user_id: int, data: ChangeRequest) -> UserSegments:
    """A validated change request, applied: shared by the handler and the hot path.

    No clock here: a ttl goes to the script, which counts it from its own
    time on the Redis server's clock, and the script tells whether an
    ``expires_at`` is in the future (``InvalidRequest`` when not)."""
    adds: list[AddItem] = []
    for item in data.add:
        if isinstance(item, str):
            adds.append(AddItem(item, 0))
        elif item.ttl_seconds is not None:
            adds.append(AddItem(item.slug, 0, item.ttl_seconds * 1000))
        elif item.expires_at is not None:
            adds.append(AddItem(item.slug, rules.deadline_ms(item.expires_at)))
        else:
            adds.append(AddItem(item.slug, 0))
    return plain(user_id, await store.change_user_segments(user_id, adds, data.remove))


class UserController(Controller):
    path = "/api/v1/users"
    tags = ["users"]

    @post("/", status_code=200, summary="Register users (1 to 10,000 ids)")
    async def register(self, data: UsersCreate, store: NamedDependency[Store]) -> UsersCreated:
        return UsersCreated(created=await store.register_users(data.user_ids))

    @delete(
        "/{user_id:str}",
        summary="Forget a user",
        description="Every membership ends (history reason `user_deleted`). Idempotent.",
    )
    async def forget(self, user_id: PathUserId, store: NamedDependency[Store]) -> None:
        await store.delete_user(user_id_of(user_id))

    @get(
        "/{user_id:str}/segments",
        summary="The user's segments",
        description="Sorted slugs; an unknown user has none (not an error). With "
        "`expand=true`, objects with the deadline (`expires_at`, null for none).",
    )
    async def segments(
        self, user_id: PathUserId, store: NamedDependency[Store], expand: bool = False
    ) -> UserSegments | UserSegmentsExpanded:
        uid = user_id_of(user_id)
        memberships = await store.user_segments(uid)
        return expanded(uid, memberships) if expand else plain(uid, memberships)

    @post(
        "/{user_id:str}/segments",
        status_code=200,
        summary="Add and remove the user's segments, atomically",
        description="An add item is a slug, or `{slug, ttl_seconds}` or `{slug, "
        "expires_at}`. All of the change applies or none of it. Answers the user's "
        "segments after the change.",
        responses={404: ResponseSpec(ErrorBody, description="Unknown segment(s), named")},
    )
    async def change(
        self, user_id: PathUserId, data: ChangeRequest, store: NamedDependency[Store]
    ) -> UserSegments:
        return await apply_change(store, user_id_of(user_id), data)

    @post(
        "/lookup",
        status_code=200,
        summary="Segments of many users (1 to 1,000 ids), in request order",
        description="A read: the read scope suffices (the ids travel in the body).",
        opt={"reads": True},
    )
    async def lookup(self, data: LookupRequest, store: NamedDependency[Store]) -> LookupResponse:
        results = await store.lookup(data.user_ids)
        return LookupResponse(
            users=[plain(uid, m) for uid, m in zip(data.user_ids, results, strict=True)]
        )
