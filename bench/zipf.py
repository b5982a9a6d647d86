"""Zipf-skewed user ids for the skewed lookup scenario.

wrk's Lua draws a uniform line of a table file; the skew lives in the table:
``samples`` ids drawn from a Zipf law over ranks 1..users, each rank mapped to
a user id by a fixed permutation, so the hot users are spread over the id
space (and so over the service's shards) instead of being ids 1, 2, 3.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from pathlib import Path

DEFAULT_EXPONENT = 1.0
"""Classic Zipf: the k-th most popular user is asked k times less than the first."""

DEFAULT_SAMPLES = 1 << 20
"""Table lines: enough that the head's frequencies are within a few percent."""

_MULTIPLIER = 2_654_435_761
"""Knuth's multiplicative-hash constant; stepped up until coprime with ``users``."""


def rank_to_user(users: int) -> list[int]:
    """A permutation of 1..users: entry r-1 is the user id of popularity rank r."""
    if users < 1:
        raise ValueError("users must be at least 1")
    step = _MULTIPLIER % users or 1
    while math.gcd(step, users) != 1:
        step += 1
    return [(rank * step) % users + 1 for rank in range(users)]


def cumulative_weights(users: int, exponent: float) -> list[float]:
    """Running sums of 1/rank**exponent for ranks 1..users."""
    if exponent <= 0:
        raise ValueError("exponent must be positive")
    return list(itertools.accumulate(1.0 / rank**exponent for rank in range(1, users + 1)))


def sample(users: int, count: int, exponent: float = DEFAULT_EXPONENT, seed: int = 1) -> list[int]:
    """``count`` user ids from 1..users, Zipf-distributed by rank."""
    if count < 1:
        raise ValueError("count must be at least 1")
    rng = random.Random(seed)
    ids = rank_to_user(users)
    return rng.choices(ids, cum_weights=cumulative_weights(users, exponent), k=count)


def write_table(path: Path, ids: Iterable[int]) -> Path:
    """Write one id a line, the format ``bench/lua/common.lua`` reads (``ids=PATH``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def top_share(ids: list[int], top: int) -> float:
    """Share of ``ids`` that fall on the ``top`` most frequent ids (to describe the skew)."""
    counts: dict[int, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    head = sorted(counts.values(), reverse=True)[:top]
    return sum(head) / len(ids)
