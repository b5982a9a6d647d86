"""Fast unit tests: key names, request validation, time helpers, settings.

No server is needed: these are pure functions of ``segments_core.keys``,
``service.models``, ``segments_core.clock`` and ``service.settings``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments_core import keys
from segments_core.clock import from_datetime, to_datetime, wall_clock_ms
from service.models import (
    MAX_USER_ID,
    ChangeRequest,
    LookupRequest,
    SegmentCreate,
    SegmentPatch,
    UsersCreate,
    percent_x100,
)
from service.settings import ConfigError, load
from tests.support import KEYSPACE

# --- segments_core.keys -------------------------------------------------------------

# crc32(decimal id) % 16, computed once and pinned: a change here moves users
# to other shards, which is a data migration (docs/design.md).
PINNED_SHARDS = {
    1: 7,
    2: 13,
    3: 11,
    4: 8,
    5: 14,
    6: 4,
    7: 2,
    8: 3,
    17: 2,
    42: 8,
    100: 10,
    12345: 12,
    10**18: 7,
    MAX_USER_ID: 14,
}


@pytest.mark.parametrize(("user_id", "shard"), sorted(PINNED_SHARDS.items()))
def test_shard_of_is_pinned(user_id: int, shard: int) -> None:
    assert KEYSPACE.shard_of(user_id) == shard


def test_sixteen_shards_each_with_its_own_tag() -> None:
    assert keys.DEFAULT_SHARDS == 16
    assert len(KEYSPACE.shard_keys) == 16
    tags = [k.tag for k in KEYSPACE.shard_keys]
    assert tags == [f"{{s{i:02d}}}" for i in range(16)]
    assert [k.shard for k in KEYSPACE.shard_keys] == list(range(16))


def _hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes (the first ``{...}``)."""
    match = re.search(r"\{([^}]*)\}", key)
    assert match is not None and match[1], key
    return match[1]


@pytest.mark.parametrize("shard", range(16))
def test_every_key_of_a_shard_shares_its_hash_tag(shard: int) -> None:
    k = KEYSPACE.shard_keys[shard]
    names = [
        k.seg_id,
        k.seg_slug,
        k.seg_dying,
        k.seg_dead,
        k.seg_rev,
        k.seg_pct,
        k.seg_hi,
        k.counts,
        k.users,
        k.due,
        k.events,
        k.user(1),
        k.user(MAX_USER_ID),
        k.user_prefix + "123",
    ]
    assert {_hash_tag(name) for name in names} == {f"s{shard:02d}"}
    # Every key name starts with the tag, so the tag is the first {...}.
    assert all(name.startswith(k.tag + ":") for name in names)
    # And no two roles share a key.
    assert len(set(names)) == len(names)


def test_global_keys_share_the_global_tag() -> None:
    g = keys.GLOBAL
    names = [g.segments, g.next_id, g.deleting, g.rollouts, g.events]
    assert {_hash_tag(n) for n in names} == {"g"}
    assert len(set(names)) == len(names)


def test_keys_of_different_shards_never_collide() -> None:
    fields = ("users", "events", "due", "counts")
    every = [getattr(k, f) for k in KEYSPACE.shard_keys for f in fields]
    assert len(set(every)) == len(every)


@given(st.integers(min_value=1, max_value=MAX_USER_ID))
def test_for_user_is_the_users_shard(user_id: int) -> None:
    k = KEYSPACE.for_user(user_id)
    assert 0 <= k.shard < 16
    assert k is KEYSPACE.shard_keys[KEYSPACE.shard_of(user_id)]
    assert k.user(user_id) == f"{{s{k.shard:02d}}}:u:{user_id}"


def test_history_streams_are_global_then_each_shard() -> None:
    streams = KEYSPACE.history_streams()
    assert streams[0] == keys.GLOBAL.events
    assert streams[1:] == [k.events for k in KEYSPACE.shard_keys]


def test_users_spread_over_every_shard() -> None:
    counts = [0] * 16
    for uid in range(1, 16_001):
        counts[KEYSPACE.shard_of(uid)] += 1
    # crc32 is close to uniform: every shard gets a fair share.
    assert min(counts) > 800 and max(counts) < 1200, counts


# --- service.models: slugs ------------------------------------------------------


def _segment(body: dict) -> SegmentCreate:
    return msgspec.json.decode(msgspec.json.encode(body), type=SegmentCreate)


@pytest.mark.parametrize(
    "slug",
    ["A", "a", "0", "AVITO_VOICE_MESSAGES", "AVITO_DISCOUNT_30", "a.b-c_d", "9-", "x" * 100],
)
def test_good_slugs_are_accepted(slug: str) -> None:
    assert _segment({"slug": slug}).slug == slug


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "x" * 101,
        "-A",
        "=A",
        "+A",
        "@A",
        "_A",
        ".A",
        "A B",
        "A/B",
        "A:B",
        "A,B",
        "Ä",
        "A\tB",
        "=SUM(A1)",
    ],
)
def test_bad_slugs_are_rejected(slug: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        _segment({"slug": slug})


def test_slug_length_limit_is_100() -> None:
    assert _segment({"slug": "A" * 100}).slug == "A" * 100
    with pytest.raises(msgspec.ValidationError):
        _segment({"slug": "A" * 101})


@pytest.mark.parametrize("slug", ["A\n", "AVITO_DISCOUNT_30\n"])
def test_slug_with_trailing_newline_is_rejected(slug: str) -> None:
    # SPEC §3: a slug is letters, digits, `_`, `.` and `-` only. msgspec
    # matches patterns with re.search, where `$` also matches before a final
    # "\n", so SLUG_PATTERN = "^...$" lets "A\n" through (a newline inside a
    # CSV field, a key of the catalogue that no client can type).
    with pytest.raises(msgspec.ValidationError):
        _segment({"slug": slug})


def test_slugs_are_checked_in_add_and_remove_too() -> None:
    for body in ({"add": ["-A"]}, {"add": [{"slug": "=A"}]}, {"remove": ["+A"]}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(msgspec.json.encode(body), type=ChangeRequest)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        _segment({"slug": "A", "colour": "red"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"add": [], "delete": []}', type=ChangeRequest)


# --- service.models: user ids ---------------------------------------------------


@pytest.mark.parametrize("uid", [1, 2, 2**53 + 1, MAX_USER_ID])
def test_user_id_bounds_accepted(uid: int) -> None:
    body = msgspec.json.encode({"user_ids": [uid]})
    assert msgspec.json.decode(body, type=UsersCreate).user_ids == [uid]
    assert msgspec.json.decode(body, type=LookupRequest).user_ids == [uid]


def test_max_user_id_is_2_pow_63_minus_1() -> None:
    assert MAX_USER_ID == 2**63 - 1


@pytest.mark.parametrize("raw", [b"0", b"-1", b"9223372036854775808", b"1.0", b'"1"', b"true"])
def test_user_id_out_of_bounds_or_wrong_type_rejected(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"user_ids": [' + raw + b"]}", type=UsersCreate)


def test_user_id_list_sizes() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"user_ids": []}', type=UsersCreate)
    ok = msgspec.json.encode({"user_ids": list(range(1, 10_001))})
    assert len(msgspec.json.decode(ok, type=UsersCreate).user_ids) == 10_000
    too_many = msgspec.json.encode({"user_ids": list(range(1, 10_002))})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(too_many, type=UsersCreate)
    lookup_ok = msgspec.json.encode({"user_ids": list(range(1, 1_001))})
    assert len(msgspec.json.decode(lookup_ok, type=LookupRequest).user_ids) == 1_000
    lookup_too_many = msgspec.json.encode({"user_ids": list(range(1, 1_002))})
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(lookup_too_many, type=LookupRequest)


# --- service.models: percent ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "x100"),
    [(b"100", 10000), (b"100.0", 10000), (b"10.5", 1050), (b"0.01", 1), (b"33.33", 3333)],
)
def test_good_percents(raw: bytes, x100: int) -> None:
    created = msgspec.json.decode(b'{"slug": "A", "percent": ' + raw + b"}", type=SegmentCreate)
    assert created.percent is not None
    assert percent_x100(created.percent) == x100


@pytest.mark.parametrize(
    "raw", [b"0", b"-1", b"100.01", b"101", b"10.555", b"0.001", b'"10"', b"true"]
)
def test_bad_percents(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"slug": "A", "percent": ' + raw + b"}", type=SegmentCreate)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"percent": ' + raw + b"}", type=SegmentPatch)


def test_patch_percent_null_absent_and_value() -> None:
    assert msgspec.json.decode(b'{"percent": null}', type=SegmentPatch).percent is None
    assert msgspec.json.decode(b"{}", type=SegmentPatch).percent is msgspec.UNSET
    assert msgspec.json.decode(b'{"percent": 10.5}', type=SegmentPatch).percent == 10.5


@given(st.integers(min_value=1, max_value=10_000))
def test_percent_x100_round_trips_every_two_decimal_value(x100: int) -> None:
    assert percent_x100(x100 / 100) == x100


def test_percent_x100_refuses_a_third_decimal() -> None:
    with pytest.raises(ValueError):
        percent_x100(10.555)


# --- service.models: change requests ---------------------------------------------


def _change(body: dict) -> ChangeRequest:
    return msgspec.json.decode(msgspec.json.encode(body), type=ChangeRequest)


def test_change_request_shapes() -> None:
    got = _change(
        {
            "add": ["A", {"slug": "B"}, {"slug": "C", "ttl_seconds": 5}],
            "remove": ["D"],
        }
    )
    assert got.add[0] == "A"
    assert [getattr(i, "slug", i) for i in got.add] == ["A", "B", "C"]
    assert got.add[2].ttl_seconds == 5  # type: ignore[union-attr]
    assert got.remove == ["D"]
    empty = _change({})
    assert empty.add == [] and empty.remove == []


def test_add_item_with_both_ttl_and_expires_at_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        _change({"add": [{"slug": "A", "ttl_seconds": 5, "expires_at": "2030-01-01T00:00:00Z"}]})


@pytest.mark.parametrize("value", ["2030-01-01T00:00:00", "2030-01-01 00:00:00", "2030-01-01"])
def test_naive_expires_at_rejected(value: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        _change({"add": [{"slug": "A", "expires_at": value}]})


def test_expires_at_with_an_offset_is_the_same_instant() -> None:
    utc = _change({"add": [{"slug": "A", "expires_at": "2030-01-01T00:00:00Z"}]})
    plus3 = _change({"add": [{"slug": "A", "expires_at": "2030-01-01T03:00:00+03:00"}]})
    a, b = utc.add[0], plus3.add[0]
    assert not isinstance(a, str) and not isinstance(b, str)
    assert a.expires_at is not None and b.expires_at is not None
    assert from_datetime(a.expires_at) == from_datetime(b.expires_at) == 1_893_456_000_000


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "5", 100 * 365 * 24 * 3600 + 1])
def test_bad_ttl_rejected(ttl: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        _change({"add": [{"slug": "A", "ttl_seconds": ttl}]})


def test_ttl_bounds_accepted() -> None:
    for ttl in (1, 100 * 365 * 24 * 3600):
        item = _change({"add": [{"slug": "A", "ttl_seconds": ttl}]}).add[0]
        assert not isinstance(item, str) and item.ttl_seconds == ttl


@pytest.mark.parametrize(
    "body",
    [
        {"add": ["A"], "remove": ["A"]},
        {"add": [{"slug": "A", "ttl_seconds": 5}], "remove": ["B", "A"]},
        {"add": ["A", "A"]},
        {"add": ["A", {"slug": "A", "ttl_seconds": 5}]},
        {"remove": ["B", "B"]},
    ],
)
def test_slug_twice_in_one_change_rejected(body: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        _change(body)


def test_slugs_are_case_sensitive_so_a_and_lower_a_are_distinct() -> None:
    got = _change({"add": ["A"], "remove": ["a"]})
    assert got.add == ["A"] and got.remove == ["a"]


# --- segments_core.clock ---------------------------------------------------------------


def test_clock_known_values() -> None:
    assert from_datetime(datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)) == 1_700_000_000_000
    assert to_datetime(1_700_000_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert to_datetime(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert to_datetime(1).microsecond == 1000
    moscow = timezone(timedelta(hours=3))
    assert from_datetime(datetime(2023, 11, 15, 1, 13, 20, tzinfo=moscow)) == 1_700_000_000_000


def test_to_datetime_is_aware_utc() -> None:
    value = to_datetime(1_700_000_000_123)
    assert value.tzinfo is not None and value.utcoffset() == timedelta(0)


@given(st.integers(min_value=0, max_value=4_102_444_800_000))  # up to 2100
def test_ms_round_trip_is_exact(ms: int) -> None:
    value = to_datetime(ms)
    assert value.microsecond == (ms % 1000) * 1000
    assert from_datetime(value) == ms


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2030-01-01T00:00:00.001+00:00", 1_893_456_000_001),
        ("2038-05-31T12:00:00.002+00:00", 2_158_920_000_002),
        ("2038-05-31T15:00:00.002+03:00", 2_158_920_000_002),
    ],
)
def test_expires_at_with_milliseconds_is_exact(text: str, ms: int) -> None:
    # from_datetime computes int(value.timestamp() * 1000): the float product
    # can land just below the integer and int() truncates. About 0.5% of the
    # instants between 2038-01-19 (2^31 s) and 2039-09-07 (2^41 ms) come out
    # 1 ms early (also small ones, e.g. 1970-01-01T00:00:04.015Z -> 4014):
    # such an expires_at is stored, and answered by ?expand=true, 1 ms off.
    assert from_datetime(datetime.fromisoformat(text)) == ms


def test_wall_clock_is_integer_ms_near_now() -> None:
    now = wall_clock_ms()
    assert isinstance(now, int)
    assert abs(now - int(datetime.now(UTC).timestamp() * 1000)) < 60_000


# --- service.settings -------------------------------------------------------------


def test_empty_environment_is_all_defaults() -> None:
    settings = load({})
    assert settings.redis_url is None and settings.database_url is None
    assert settings.read_tokens == frozenset() and settings.write_tokens == frozenset()
    assert not settings.auth_enabled


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://user:pw@host:6380/2", "unix:///tmp/redis.sock"],
)
def test_good_redis_urls(url: str) -> None:
    assert load({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "postgresql://x/y", "redis://", "x"]
)
def test_bad_redis_url_names_redis_url(url: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load({"REDIS_URL": url})


def test_bad_database_url_names_database_url() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load({"DATABASE_URL": "mysql://x/y"})
    assert load({"DATABASE_URL": "postgresql://u@h/d"}).database_url == "postgresql://u@h/d"


def test_bad_public_url_names_it_and_trailing_slash_goes() -> None:
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        load({"PUBLIC_URL": "ftp://example.com"})
    assert load({"PUBLIC_URL": "https://seg.example.com/"}).public_url == (
        "https://seg.example.com"
    )


def test_tokens_parsing() -> None:
    settings = load({"SEGMENTS_TOKENS": " r1:read, w1:write ,r2:read,,"})
    assert settings.write_tokens == {"w1"}
    # A write token may also read.
    assert settings.read_tokens == {"r1", "r2", "w1"}
    assert settings.auth_enabled


def test_token_may_contain_a_colon() -> None:
    assert load({"SEGMENTS_TOKENS": "a:b:write"}).write_tokens == {"a:b"}


@pytest.mark.parametrize("raw", ["tok", "tok:admin", ":read", "tok:READ", "tok:"])
def test_bad_tokens_name_segments_tokens(raw: str) -> None:
    with pytest.raises(ConfigError, match="SEGMENTS_TOKENS"):
        load({"SEGMENTS_TOKENS": raw})


def test_short_signing_key_names_it() -> None:
    with pytest.raises(ConfigError, match="SEGMENTS_SIGNING_KEY"):
        load({"SEGMENTS_SIGNING_KEY": "short"})
    assert load({"SEGMENTS_SIGNING_KEY": "k" * 16}).signing_key == b"k" * 16


@pytest.mark.parametrize("raw", ["abc", "0", "-1"])
def test_bad_sweep_interval_names_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="SEGMENTS_SWEEP_INTERVAL"):
        load({"SEGMENTS_SWEEP_INTERVAL": raw})


def test_numbers_parse() -> None:
    settings = load({"SEGMENTS_SWEEP_INTERVAL": "0.25", "SEGMENTS_REPORT_LINK_TTL": "60"})
    assert settings.sweep_interval_s == 0.25
    assert settings.report_link_ttl_s == 60


@pytest.mark.parametrize(
    "name", ["SEGMENTS_SWEEP_INTERVAL", "SEGMENTS_REPORT_WAIT", "SEGMENTS_REPORT_LINK_TTL"]
)
@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_non_finite_numbers_stop_start_up_naming_the_variable(name: str, raw: str) -> None:
    # SPEC §7: a bad value stops start-up with a message that names it.
    # `_positive` accepts float("nan") (nan <= 0 is False) and float("inf");
    # SEGMENTS_REPORT_LINK_TTL=inf then dies in int() with an OverflowError
    # that names nothing.
    with pytest.raises(ConfigError, match=name):
        load({name: raw})


def test_report_link_ttl_below_one_second_is_not_silently_zero() -> None:
    # "0.4" passes the "must be positive" check, then int() makes it 0: every
    # report link would be born expired.
    try:
        settings = load({"SEGMENTS_REPORT_LINK_TTL": "0.4"})
    except ConfigError as exc:
        assert "SEGMENTS_REPORT_LINK_TTL" in str(exc)
    else:
        assert settings.report_link_ttl_s >= 1
