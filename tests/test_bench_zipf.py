"""The Zipf id table of the skewed lookup scenario."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench import zipf


@pytest.mark.parametrize("users", [1, 2, 10, 97, 1000, 4096])
def test_rank_to_user_is_a_permutation(users: int) -> None:
    assert sorted(zipf.rank_to_user(users)) == list(range(1, users + 1))


def test_hot_users_are_not_the_lowest_ids() -> None:
    assert zipf.rank_to_user(100_000)[:3] != [1, 2, 3]


def test_sample_is_deterministic_and_in_range() -> None:
    a = zipf.sample(1000, 5000, seed=3)
    assert a == zipf.sample(1000, 5000, seed=3)
    assert a != zipf.sample(1000, 5000, seed=4)
    assert min(a) >= 1 and max(a) <= 1000


def test_sample_follows_the_law_at_the_head() -> None:
    users, count = 1000, 200_000
    ids = zipf.sample(users, count, exponent=1.0, seed=1)
    order = zipf.rank_to_user(users)
    freq = Counter(ids)
    harmonic = sum(1 / k for k in range(1, users + 1))
    for rank in (1, 2, 10):
        expected = count / (rank * harmonic)
        assert freq[order[rank - 1]] == pytest.approx(expected, rel=0.1)


def test_bigger_exponent_is_more_skewed() -> None:
    mild = zipf.sample(10_000, 50_000, exponent=0.8, seed=1)
    steep = zipf.sample(10_000, 50_000, exponent=1.2, seed=1)
    assert zipf.top_share(steep, 100) > zipf.top_share(mild, 100)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        zipf.rank_to_user(0)
    with pytest.raises(ValueError):
        zipf.cumulative_weights(10, 0)
    with pytest.raises(ValueError):
        zipf.sample(10, 0)


def test_table_is_one_id_a_line(tmp_path: Path) -> None:
    path = zipf.write_table(tmp_path / "sub" / "z.ids", [5, 1, 5])
    assert path.read_text() == "5\n1\n5\n"
