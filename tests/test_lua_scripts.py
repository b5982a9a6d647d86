"""The Lua scripts called directly: bad arguments, the loader, the includes.

Every script header promises "BADARG when an argument is malformed (nothing
is changed)". Each case here calls a script through ``LuaScript.__call__``
with one malformed argument on a database holding real state, and checks
that the call raises ``ScriptArgumentError`` and that every key is
byte-for-byte what it was (DUMP of every key).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from segments_core.keys import GLOBAL, ShardKeys
from segments_core.redis_client import connect
from service.errors import ScriptArgumentError
from service.scripts import LUA_DIR, LuaScript, load_scripts
from service.store import AddItem, Store
from tests.support import for_user
from tests.support.cluster import async_client, every_master

NOW = 1_700_000_000_000
SCRIPTS = load_scripts(clock=lambda: NOW)
"""The test build: the scripts take the explicit times these cases give."""
UID = 5  # a user with memberships in the seeded state
K = for_user(UID)


def _header_keys(name: str) -> list[str]:
    """The KEYS of a script as its header documents them (``KEYS[n] <name>``)."""
    source = SCRIPTS[name].source
    found = re.findall(r"^\s*KEYS\[(\d+)\]\s+(\S+)", source, re.MULTILINE)
    assert [int(n) for n, _ in found] == list(range(1, len(found) + 1)), name
    return [pattern for _, pattern in found]


def _all_key_names(k: ShardKeys, uid: int) -> set[str]:
    shard = {
        k.seg_id, k.seg_slug, k.seg_dying, k.seg_dead, k.seg_rev, k.seg_pct, k.seg_hi,
        k.counts, k.users, k.due, k.events, k.user(uid),
    }  # fmt: skip
    g = GLOBAL
    return shard | {g.segments, g.next_id, g.deleting, g.rollouts, g.events}


def user_keys(name: str, k: ShardKeys = K, uid: int = UID) -> list[str]:
    """The keys a script takes, in header order, for user ``uid`` / shard ``k``."""
    keys = [
        p.replace("{sNN}", k.tag).replace("<uid>", str(uid)) for p in _header_keys(name)
    ]
    unknown = set(keys) - _all_key_names(k, uid)
    assert not unknown, f"{name} header names keys segments_core.keys does not build: {unknown}"
    return keys


@pytest.fixture
async def r(clean_redis_url: str) -> AsyncIterator[Any]:
    client = await connect(clean_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def raw(clean_redis_url: str) -> AsyncIterator[Any]:
    """A client without decoding, for DUMP."""
    client = async_client(clean_redis_url)
    try:
        yield client
    finally:
        await client.aclose()


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


_SEED: dict[bytes, bytes] = {}
"""DUMP of every key of the seeded state, made once and RESTOREd per test."""


@pytest.fixture
async def seeded(r: Any, raw: Any) -> Store:
    """Real state in every kind of key: segments (one with a percent), users,
    memberships with and without deadlines, a finished deletion, events."""
    store = Store(r, clock=Clock(NOW))
    if _SEED:
        pipe = raw.pipeline(transaction=False)
        for name, value in _SEED.items():
            pipe.restore(name, 0, value)
        await pipe.execute()
        return store
    await store.create_segment("A", "a", 0)
    await store.create_segment("B", "b", 0)
    await store.create_segment("GONE", "", 0)
    await store.register_users(range(1, 41))
    await store.create_segment("P", "p", 5000)
    await store.change_user_segments(UID, [AddItem("A", NOW + 1000), AddItem("B", 0)], [])
    await store.change_user_segments(UID, [AddItem("GONE", NOW + 500)], [])
    await store.change_user_segments(7, [AddItem("A", NOW + 2000)], [])
    await store.delete_segment("GONE")
    _SEED.update(await snapshot(raw))
    return store


async def snapshot(raw: Any) -> dict[bytes, bytes]:
    names = sorted([key async for key in raw.scan_iter(count=1000)])
    pipe = raw.pipeline(transaction=False)
    for name in names:
        pipe.dump(name)
    dumps = await pipe.execute()
    assert await raw.dbsize(**every_master(raw)) == len(names)  # (a cluster refuses it pipelined)
    return dict(zip(names, dumps, strict=True))


# One malformed argument per case; everything else valid. (script, args)
BAD_CALLS: list[tuple[str, list[Any], str]] = [
    # user ids
    *[
        ("changeMemberships", [uid, NOW, 0], f"uid {uid!r}")
        for uid in ["abc", "0", "-1", "", "1.5", "05", "1 ", "12345678901234567890"]
    ],
    *[("getMemberships", [uid, NOW], f"uid {uid!r}") for uid in ["abc", "0", "-1", ""]],
    *[("deleteUser", [uid, NOW], f"uid {uid!r}") for uid in ["abc", "0", "-1", "+5"]],
    ("registerUsers", [K.user_prefix, NOW, 100, "abc", 101], "one bad uid among good ones"),
    ("registerUsers", [K.user_prefix, NOW, 100, "0"], "uid 0"),
    ("registerUsers", [K.user_prefix, NOW, "-1"], "uid -1"),
    # now
    *[
        ("changeMemberships", [UID, now, 1, "A", 0, 0], f"now {now!r}")
        for now in ["abc", "-1", "1.5", "nan", "-inf"]
    ],
    *[("getMemberships", [UID, now], f"now {now!r}") for now in ["abc", "-1", "1.5"]],
    *[("deleteUser", [UID, now], f"now {now!r}") for now in ["abc", "-1", "0.5"]],
    ("registerUsers", [K.user_prefix, "abc", 100], "now abc"),
    ("registerUsers", [K.user_prefix, "-5", 100], "now -5"),
    # number of adds and the triples
    ("changeMemberships", [UID, NOW, "-1"], "nAdd -1"),
    ("changeMemberships", [UID, NOW, "1.5", "A", 0, 0], "nAdd 1.5"),
    ("changeMemberships", [UID, NOW, "x"], "nAdd x"),
    ("changeMemberships", [UID, NOW, 2, "A", 0, 0], "too few add triples"),
    ("changeMemberships", [UID, NOW, 1, "A"], "a slug without its deadline"),
    ("changeMemberships", [UID, NOW, 1, "A", 0], "a slug without its ttl"),
    ("changeMemberships", [UID, NOW, 1], "no triple at all"),
    # deadlines and ttls
    ("changeMemberships", [UID, NOW, 1, "A", "-5", 0], "negative deadline"),
    ("changeMemberships", [UID, NOW, 1, "A", "abc", 0], "deadline abc"),
    ("changeMemberships", [UID, NOW, 1, "A", f"{NOW + 1000}.5", 0], "float deadline"),
    ("changeMemberships", [UID, NOW, 1, "A", 0, "-1"], "negative ttl"),
    ("changeMemberships", [UID, NOW, 1, "A", 0, "abc"], "ttl abc"),
    ("changeMemberships", [UID, NOW, 1, "A", NOW + 5000, 1000], "a deadline and a ttl"),
    # the sweeper (with a "now" at which everything would expire)
    ("expireMemberships", [K.user_prefix, "abc", 10], "now abc"),
    ("expireMemberships", [K.user_prefix, "-1", 10], "now -1"),
    ("expireMemberships", [K.user_prefix, NOW + 10**6, "-1"], "limit -1"),
    ("expireMemberships", [K.user_prefix, NOW + 10**6, "1.5"], "limit 1.5"),
    ("expireMemberships", [K.user_prefix, NOW + 10**6, "x"], "limit x"),
    # purge / rollout steps
    ("purgeSegment", [K.user_prefix, "x", "0", 10], "segment id x"),
    ("purgeSegment", [K.user_prefix, "-3", "0", 10], "segment id -3"),
    ("purgeSegment", [K.user_prefix, 1, "x", 10], "cursor x"),
    ("purgeSegment", [K.user_prefix, 1, "0", "-1"], "count -1"),
    ("rolloutSegment", [K.user_prefix, "x", "0", 10, NOW], "segment id x"),
    ("rolloutSegment", [K.user_prefix, 4, "x", 10, NOW], "cursor x"),
    ("rolloutSegment", [K.user_prefix, 4, "0", "-1", NOW], "count -1"),
    ("rolloutSegment", [K.user_prefix, 4, "0", 10, "x"], "now x"),
    ("rolloutSegment", [K.user_prefix, 4, "0", 10, "1.5"], "now 1.5"),
    # the shard catalogue
    ("registerSegment", ["x", "NEW", 0, 1, NOW], "segment id x"),
    ("registerSegment", [99, "NEW", "x", 1, NOW], "percent x"),
    ("registerSegment", [99, "NEW", "-100", 1, NOW], "percent -100"),
    ("registerSegment", [99, "NEW", 0, 1, "x"], "now x"),
    ("registerSegment", [99, "NEW", "10.5", 1, NOW], "percent 10.5"),
    ("registerSegment", [99, "NEW", 0, "x", NOW], "revision x"),
    ("retireSegment", ["x", "A", NOW], "segment id x"),
    ("retireSegment", [1, "A", "x"], "now x"),
    ("retireSegment", [1, "A", "-1"], "now -1"),
    # the global catalogue
    ("createSegment", ["NEW", "", "x", NOW], "percent x"),
    ("createSegment", ["NEW", "", "-1", NOW], "percent -1"),
    ("createSegment", ["NEW", "", "10001", NOW], "percent above 100"),
    ("createSegment", ["NEW", "", "1.5", NOW], "percent x100 not an integer"),
    ("createSegment", ["NEW", "", 0, "x"], "now x"),
    ("createSegment", ["NEW", "", 0, "-1"], "now -1"),
    ("deleteSegment", ["A", "x"], "now x"),
    ("deleteSegment", ["A", "-1"], "now -1"),
    ("deleteSegment", ["A", "1.5"], "now 1.5"),
    ("updateSegment", ["A", "1", "d", "1", "x", NOW], "percent x"),
    ("updateSegment", ["A", "1", "d", "1", "10001", NOW], "percent above 100"),
    ("updateSegment", ["A", "1", "d", "1", "-5", NOW], "percent -5"),
    ("updateSegment", ["A", "1", "d", "0", 0, "x"], "now x"),
]


async def refused_without_change(raw: Any, call: Any) -> None:
    """Runs ``call``; the state must be unchanged whatever happened, and the
    refusal must be a ScriptArgumentError (checked in that order, so a
    failure says which half broke)."""
    before = await snapshot(raw)
    assert before  # the seeded state is there to be kept
    error: BaseException | None = None
    try:
        await call()
    except Exception as exc:
        error = exc
    after = await snapshot(raw)
    changed = sorted({*before, *after} - {k for k in before if after.get(k) == before[k]})
    why = f"{type(error).__name__}: {error}" if error else "no error"
    assert after == before, f"keys changed: {changed!r}; {why}"
    assert isinstance(error, ScriptArgumentError), f"not a typed BADARG: {why}"
    assert error.status_code == 400


@pytest.mark.parametrize(
    ("name", "args"),
    [pytest.param(n, a, id=f"{n}: {why}") for n, a, why in BAD_CALLS],
)
async def test_bad_arguments_raise_typed_error_and_change_nothing(
    seeded: Store, r: Any, raw: Any, name: str, args: list[Any]
) -> None:
    async def call() -> None:
        try:
            await SCRIPTS[name](r, user_keys(name), args)
        except ScriptArgumentError as exc:
            assert str(exc).startswith(f"{name}: BADARG")
            raise

    await refused_without_change(raw, call)


PAST_DEADLINES: list[tuple[list[Any], str, str]] = [
    ([UID, NOW, 1, "A", NOW, 0], "A", "deadline == now"),
    ([UID, NOW, 1, "A", NOW - 1, 0], "A", "deadline before now"),
    ([UID, NOW, 1, "A", 1, 0], "A", "deadline long ago"),
    ([UID, NOW, 2, "B", NOW + 5000, 0, "A", NOW, 0], "A", "second deadline past, first good"),
    ([UID, NOW, 1, "NOPE", NOW - 1, 0], "NOPE", "past deadline and unknown slug"),
]


@pytest.mark.parametrize(
    ("args", "slug"), [pytest.param(a, s, id=why) for a, s, why in PAST_DEADLINES]
)
async def test_a_deadline_not_after_the_scripts_time_changes_nothing(
    seeded: Store, r: Any, raw: Any, args: list[Any], slug: str
) -> None:
    """Whether a deadline is in the future is judged by the script on its own
    clock (the Redis server's): the answer {4, slug} (a 400), nothing changed."""
    before = await snapshot(raw)
    assert await SCRIPTS["changeMemberships"](r, user_keys("changeMemberships"), args) == [
        4,
        slug,
    ]
    assert await snapshot(raw) == before


# Found by these tests: malformed arguments the scripts accept. `requireNumber`
# uses Lua's tonumber(), which takes "inf" (also "1e3", "0x10", " 12"): a
# `now` of infinity passes (every event of the call is stamped "inf", a
# timestamp no reader can parse); `requireUserId` only bounds the length (19
# digits), so 2^63 .. 10^19-1 pass although SPEC §3 ends user ids at 2^63-1.
# A SSCAN count of 0 passes requireNumber and then fails inside Redis with a
# plain "syntax error" instead of BADARG.
ACCEPTED_BAD_CALLS: list[tuple[str, list[Any], str]] = [
    ("changeMemberships", [UID, "inf", 1, "A", 0, 0], "now inf"),
    ("getMemberships", [41, "inf"], "now inf, new user"),
    ("changeMemberships", ["9223372036854775808", NOW, 1, "A", 0, 0], "uid 2^63"),
    ("registerUsers", [K.user_prefix, NOW, "9999999999999999999"], "uid 10^19-1"),
    ("deleteSegment", ["A", "inf"], "now inf"),
    ("purgeSegment", [K.user_prefix, 3, "0", "0"], "count 0"),
    ("rolloutSegment", [K.user_prefix, 4, "0", "0", NOW], "count 0"),
]


@pytest.mark.parametrize(
    ("name", "args"),
    [pytest.param(n, a, id=f"{n}: {why}") for n, a, why in ACCEPTED_BAD_CALLS],
)
async def test_more_malformed_arguments_are_refused(
    seeded: Store, r: Any, raw: Any, name: str, args: list[Any]
) -> None:
    keys = user_keys(name)
    if name == "getMemberships":
        keys = user_keys(name, for_user(41), 41)
    if name == "purgeSegment":
        # Make segment 3 (GONE) dying again in K's shard so the purge reaches SSCAN.
        await r.hset(K.seg_dying, "3", f"{NOW}:GONE")
    await refused_without_change(raw, lambda: SCRIPTS[name](r, keys, args))


@pytest.mark.parametrize("name", sorted(SCRIPTS))
async def test_wrong_key_count_is_a_value_error_before_redis(
    r: Any, raw: Any, name: str
) -> None:
    script = SCRIPTS[name]
    await r.set("marker", "1")
    before = await snapshot(raw)
    keys = user_keys(name)
    assert len(keys) == script.num_keys
    for wrong in (keys[:-1], [*keys, "{s00}:extra"], []):
        with pytest.raises(ValueError, match=f"{name} takes {script.num_keys} keys"):
            await script(r, wrong, [UID, NOW])
    assert await snapshot(raw) == before


async def test_valid_calls_do_change_state(seeded: Store, r: Any, raw: Any) -> None:
    """The counterpart of the cases above: the same calls with good
    arguments are not refused, so the refusals come from the bad argument."""
    before = await snapshot(raw)
    script = SCRIPTS["changeMemberships"]
    reply = await script(r, user_keys("changeMemberships"), [UID, NOW, 1, "A", NOW + 5000, 0])
    assert reply[0] == 0
    reply = await SCRIPTS["expireMemberships"](
        r, user_keys("expireMemberships"), [K.user_prefix, NOW + 10**6, 10]
    )
    assert int(reply) >= 1
    assert await snapshot(raw) != before


async def test_script_flush_between_two_calls_is_survived(seeded: Store, r: Any) -> None:
    get = SCRIPTS["getMemberships"]
    change = SCRIPTS["changeMemberships"]
    first = await get(r, user_keys("getMemberships"), [UID, NOW])
    assert len(first) == 6  # A, B, P with their deadlines
    await r.script_flush()
    assert await r.script_exists(get.sha) == [False]
    second = await get(r, user_keys("getMemberships"), [UID, NOW])
    assert second == first
    assert await r.script_exists(get.sha) == [True]
    await r.script_flush()
    reply = await change(r, user_keys("changeMemberships"), [UID, NOW, 0, "B"])
    assert reply[0] == 0 and "B" not in reply[1:]


async def test_script_flush_is_survived_by_store_calls(seeded: Store) -> None:
    store = seeded
    await store.redis.script_flush()
    # User 5 is in P's 50% cohort (bucket("P", 5) < 50), user 7 is not.
    assert [m.slug for m in await store.user_segments(UID)] == ["A", "B", "P"]
    await store.redis.script_flush()
    many = await store.lookup([UID, 7, 1003])  # 1003: unknown, not in P's cohort
    assert [[m.slug for m in ms] for ms in many] == [["A", "B", "P"], ["A"], []]
    await store.redis.script_flush()
    got = await store.change_user_segments(UID, [], ["A"])
    assert [m.slug for m in got] == ["B", "P"]
    await store.redis.script_flush()
    await store.delete_segment("B")
    assert [m.slug for m in await store.user_segments(UID)] == ["P"]


async def test_badarg_error_is_not_retried_as_noscript(seeded: Store, r: Any) -> None:
    # After a flush, the first EVALSHA fails with NOSCRIPT; the reload and the
    # second call must still surface the BADARG as a typed error.
    await r.script_flush()
    with pytest.raises(ScriptArgumentError):
        await SCRIPTS["getMemberships"](r, user_keys("getMemberships"), ["abc", NOW])


# --- the loader and the includes ------------------------------------------------


def test_every_lua_file_is_loaded_with_the_key_count_of_its_name() -> None:
    files = sorted(p.name for p in LUA_DIR.iterdir() if p.name.endswith(".lua"))
    assert len(files) == len(SCRIPTS) >= 12
    for file in files:
        name, count = re.fullmatch(r"([A-Za-z]+)-(\d+)\.lua", file).groups()  # type: ignore[union-attr]
        assert SCRIPTS[name].num_keys == int(count)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_script_source_keeps_an_include_line(name: str) -> None:
    script = SCRIPTS[name]
    assert not re.search(r"^\s*--- @include", script.source, re.MULTILINE)
    (path,) = (p for p in LUA_DIR.iterdir() if p.name.startswith(f"{name}-"))
    if '--- @include "common"' in path.read_text():
        # The include was expanded in place: the helpers are there.
        assert "local function requireNumber" in script.source
        assert "local function emit" in script.source
    assert script.sha == hashlib.sha1(script.source.encode()).hexdigest()


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_header_documents_exactly_the_keys_the_name_promises(name: str) -> None:
    script = SCRIPTS[name]
    used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", script.source)}
    assert used == set(range(1, script.num_keys + 1))
    assert len(_header_keys(name)) == script.num_keys
    user_keys(name)  # every documented key is one segments_core.keys builds


@pytest.mark.parametrize("name", sorted(SCRIPTS))
async def test_every_script_compiles_on_the_server(r: Any, name: str) -> None:
    script: LuaScript = SCRIPTS[name]
    assert await r.script_load(script.source) == script.sha


def test_loader_refuses_a_badly_named_file(tmp_path: Any) -> None:
    (tmp_path / "noKeyCount.lua").write_text("return 1\n")
    with pytest.raises(ValueError, match=r"noKeyCount\.lua"):
        load_scripts(tmp_path)


def test_loader_expands_includes_in_another_directory(tmp_path: Any) -> None:
    (tmp_path / "probe-1.lua").write_text(
        'local rcall = redis.call\n--- @include "common"\nreturn 1\n'
    )
    loaded = load_scripts(tmp_path)
    assert set(loaded) == {"probe"}
    assert loaded["probe"].num_keys == 1
    assert "local function bucketOf" in loaded["probe"].source
    assert not re.search(r"^--- @include", loaded["probe"].source, re.MULTILINE)
