"""Every endpoint of the API as a ``Call``: what to send and how to read the answer.

``Client`` and ``AsyncClient`` run the same calls, one with a blocking
transport and one with an asynchronous one, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from segments_client._retry import retry_after_s
from segments_client.errors import SegmentsError, Unavailable, error_for
from segments_client.models import AddItem, Membership, ReportLink, Segment, parse_time

T = TypeVar("T")

API = "/api/v1"


class Unset:
    """The type of ``UNSET``: "leave as it is", as opposed to None ("no value")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    """Turns the decoded JSON body (None for 204) into the method's value."""
    json: Any = None
    params: dict[str, str] | None = None
    replay_safe: bool = True
    """Sending it twice leaves the same state and answer, so it may be sent
    again when an attempt failed after it may have reached the service."""


def _slug_path(slug: str) -> str:
    return f"{API}/segments/{quote(slug, safe='')}"


def _user(user_id: int) -> int:
    # bool is an int; "5" is not: either would be a wrong cache key or a 400 later.
    if type(user_id) is not int:
        raise TypeError(f"user_id must be an int, got {type(user_id).__name__}")
    return user_id


def _none(_: Any) -> None:
    return None


def _slugs(doc: Any) -> list[str]:
    return list(doc["segments"])


def memberships_of(doc: Any) -> list[Membership]:
    return [
        Membership(m["slug"], parse_time(m["expires_at"]) if m["expires_at"] else None)
        for m in doc["segments"]
    ]


def create_segment(slug: str, description: str, percent: float | None) -> Call[Segment]:
    body: dict[str, Any] = {"slug": slug, "description": description}
    if percent is not None:
        body["percent"] = percent
    # Not replay-safe: a second attempt of a create that went through is a 409.
    return Call("POST", f"{API}/segments", Segment.from_json, body, replay_safe=False)


def list_segments() -> Call[list[Segment]]:
    return Call("GET", f"{API}/segments", lambda d: [Segment.from_json(s) for s in d["segments"]])


def get_segment(slug: str) -> Call[Segment]:
    return Call("GET", _slug_path(slug), Segment.from_json)


def update_segment(
    slug: str, description: str | Unset, percent: float | Unset | None
) -> Call[Segment]:
    body: dict[str, Any] = {}
    if not isinstance(description, Unset):
        body["description"] = description
    if not isinstance(percent, Unset):
        body["percent"] = percent
    return Call("PATCH", _slug_path(slug), Segment.from_json, body)


def delete_segment(slug: str) -> Call[None]:
    # Not replay-safe: a second attempt of a delete that went through is a 404.
    return Call("DELETE", _slug_path(slug), _none, replay_safe=False)


def register_users(user_ids: Iterable[int]) -> Call[int]:
    body = {"user_ids": [_user(u) for u in user_ids]}
    # Not replay-safe: a second attempt counts none of the users as new.
    return Call("POST", f"{API}/users", lambda d: int(d["created"]), body, replay_safe=False)


def delete_user(user_id: int) -> Call[None]:
    return Call("DELETE", f"{API}/users/{_user(user_id)}", _none)


def segments(user_id: int) -> Call[list[str]]:
    return Call("GET", f"{API}/users/{_user(user_id)}/segments", _slugs)


def memberships(user_id: int) -> Call[list[Membership]]:
    path = f"{API}/users/{_user(user_id)}/segments"
    return Call("GET", path, memberships_of, params={"expand": "true"})


def add_item(item: str | AddItem | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(item, AddItem):
        return item.to_json()
    return item


def change(
    user_id: int, add: Iterable[str | AddItem | dict[str, Any]], remove: Iterable[str]
) -> Call[list[str]]:
    body = {"add": [add_item(i) for i in add], "remove": list(remove)}
    # Replay-safe: the end state is the same (a ttl counts from the later attempt).
    return Call("POST", f"{API}/users/{_user(user_id)}/segments", _slugs, body)


def lookup(user_ids: Iterable[int]) -> Call[dict[int, list[str]]]:
    body = {"user_ids": [_user(u) for u in user_ids]}

    def parse(doc: Any) -> dict[int, list[str]]:
        return {int(u["user_id"]): list(u["segments"]) for u in doc["users"]}

    return Call("POST", f"{API}/users/lookup", parse, body)


def report_link(period: str, user_id: int | None, segment: str | None) -> Call[ReportLink]:
    params = {"period": period}
    if user_id is not None:
        params["user_id"] = str(_user(user_id))
    if segment is not None:
        params["segment"] = segment
    return Call(
        "GET",
        f"{API}/history/report",
        lambda d: ReportLink(d["url"], parse_time(d["expires_at"])),
        params=params,
    )


def feed_params(segment: str | None, user_id: int | None) -> dict[str, str]:
    """Query of ``GET /api/v1/changes``."""
    params: dict[str, str] = {}
    if segment is not None:
        params["segment"] = segment
    if user_id is not None:
        params["user_id"] = str(_user(user_id))
    return params


# -- answers and failures ---------------------------------------------------------------


def outcome(call: Call[T], response: httpx.Response) -> T:
    """The call's value, or raises the typed error of the answer."""
    if response.status_code < 400:
        return call.parse(response.json() if response.status_code != 204 else None)
    raise answer_error(response)


def answer_error(response: httpx.Response) -> SegmentsError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return error_for(response.status_code, body, retry_after_s(response.headers.get("retry-after")))


def transport_error(exc: httpx.TransportError, call: Call[Any]) -> tuple[Unavailable, bool]:
    """The error of an attempt that got no answer, and whether it may be tried again.

    Nothing was sent when the connection (or a pooled one) could not be had:
    always safe. Otherwise the request may have been applied: only a
    replay-safe call goes again.
    """
    sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "no answer"
    error = Unavailable(f"{kind}: {exc.__class__.__name__}: {exc}".rstrip(": "))
    return error, (not sent) or call.replay_safe
