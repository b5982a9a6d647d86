"""The percent-rollout bucket, part of the public contract (README).

``bucket(slug, user_id)`` is the first 32 bits of
``sha1("<slug>:<user_id>")`` (user id in decimal), taken as an unsigned
big-endian integer, modulo 10,000, divided by 100: a number in [0, 100) in
steps of 0.01. A user is in the cohort of a segment with percent ``p`` when
``bucket < p``. The Lua scripts compute the same thing with
``redis.sha1hex`` (``lua/includes/common.lua``); the tests hold both to the
published vectors.
"""

from __future__ import annotations

import hashlib

STEPS = 10_000


def bucket_steps(slug: str, user_id: int) -> int:
    """The bucket in hundredths of a percent, 0 .. 9999."""
    digest = hashlib.sha1(f"{slug}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % STEPS


def bucket(slug: str, user_id: int) -> float:
    return bucket_steps(slug, user_id) / 100


def in_cohort(slug: str, user_id: int, percent_x100: int) -> bool:
    return bucket_steps(slug, user_id) < percent_x100
