"""User ids in paths and query strings: text read by the one rule.

The framework's integer conversion is lax (``"1e3"`` becomes 1000, ``"1.0"``
becomes 1), so ids are declared as text, described in the schema as the
integers they are, and read by ``segments_core.rules.parse_user_id``: a
plain decimal id, or a 400.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter, QueryParameter

from segments_core import rules
from service.errors import InvalidRequest

PathUserId = Annotated[
    str,
    Parameter(description="User id, 1 .. 2^63-1", schema_extra=rules.USER_ID_SCHEMA),
]
QueryUserId = Annotated[
    str | None,
    QueryParameter(description="Only this user's events", schema_extra=rules.USER_ID_SCHEMA),
]


def user_id_of(text: str) -> int:
    """The user id ``text`` names; ``InvalidRequest`` (400) unless it is one, in plain decimal."""
    user_id = rules.parse_user_id(text)
    if user_id is None:
        raise InvalidRequest(
            "user_id must be an integer from 1 to 2^63-1, in plain decimal", {"user_id": text}
        )
    return user_id


def optional_user_id(text: str | None) -> int | None:
    return None if text is None else user_id_of(text)
