"""Pure parts of the archiver: entry parsing, knobs, fault points, months."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from archiver import config, faults
from archiver.events import EntryError, Row, lifecycle_row, membership_row
from archiver.writer import months_of
from segments_core.streams import GroupState, parse_id
from service.settings import ConfigError

NOW = 1_700_000_000_000
STREAM = b"{s03}:events"


def fields(**kw: str) -> dict[bytes, bytes]:
    base = {"u": "42", "s": "AVITO_VOICE", "o": "add", "t": str(NOW), "r": "manual"}
    base.update(kw)
    return {k.encode(): v.encode() for k, v in base.items() if v is not None}


def test_membership_row_is_a_copy_line() -> None:
    row = membership_row(STREAM, b"1700000000001-7", fields(d="1700000100000"), NOW)
    assert row.ms == 1700000000001 and row.seq == 7 and row.ts_ms == NOW
    assert row.payload == (
        b"{s03}:events\t1700000000001\t7\t42\tAVITO_VOICE\tadd\t1700000000000\tmanual"
        b"\t1700000100000\n"
    )


def test_membership_row_without_deadline_is_null() -> None:
    row = membership_row(STREAM, b"1-0", fields(o="remove", r="ttl"), NOW)
    assert isinstance(row.payload, bytes) and row.payload.endswith(
        b"\tremove\t1700000000000\tttl\t\\N\n"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"u": "0"}, "user id"),
        ({"u": "-5"}, "'u'"),
        ({"u": "9223372036854775808"}, "user id"),
        ({"u": "12a"}, "'u'"),
        ({"s": "-leading-dash"}, "slug"),
        ({"s": "has space"}, "slug"),
        ({"s": "x" * 101}, "slug"),
        ({"s": "tab\there"}, "slug"),
        ({"o": "toggle"}, "'o'"),
        ({"r": "because"}, "reason"),
        ({"t": "12"}, "out of range"),
        ({"t": str(NOW + 2 * 86_400_000)}, "out of range"),
        ({"t": "soon"}, "'t'"),
        ({"d": "tomorrow"}, "'d'"),
    ],
)
def test_membership_row_rejects_what_breaks_the_contract(
    change: dict[str, str], message: str
) -> None:
    with pytest.raises(EntryError, match=message):
        membership_row(STREAM, b"1-0", fields(**change), NOW)


@pytest.mark.parametrize("missing", ["u", "s", "o", "t", "r"])
def test_membership_row_rejects_a_missing_field(missing: str) -> None:
    f = fields()
    del f[missing.encode()]
    with pytest.raises(EntryError):
        membership_row(STREAM, b"1-0", f, NOW)


def test_bad_entry_id() -> None:
    with pytest.raises(EntryError):
        membership_row(STREAM, b"nope", fields(), NOW)


def lifecycle(**kw: str) -> dict[bytes, bytes]:
    base = {"o": "created", "s": "SEG", "t": str(NOW), "p": "12.5", "desc": "é \t\n\\", "id": "9"}
    base.update(kw)
    return {k.encode(): v.encode() for k, v in base.items()}


def test_lifecycle_row() -> None:
    row = lifecycle_row(b"{g}:events", b"5-1", lifecycle(), NOW)
    assert row.payload == (
        "{g}:events",
        5,
        1,
        NOW,
        "SEG",
        9,
        "created",
        Decimal("12.5"),
        "é \t\n\\",
    )
    empty = lifecycle_row(b"{g}:events", b"5-2", lifecycle(o="deleted", p=""), NOW)
    assert isinstance(empty.payload, tuple) and empty.payload[7] is None


@pytest.mark.parametrize(
    "change",
    [
        {"o": "renamed"},
        {"p": "0"},
        {"p": "100.01"},
        {"p": "1.234"},
        {"p": "NaN"},
        {"id": "x"},
        {"desc": "nul\x00"},
    ],
)
def test_lifecycle_row_rejects(change: dict[str, str]) -> None:
    with pytest.raises(EntryError):
        lifecycle_row(b"{g}:events", b"5-1", lifecycle(**change), NOW)


def _row(ts_ms: int) -> Row:
    return Row(b"1-0", 1, 0, ts_ms, b"")


def test_months_of() -> None:
    jan_end = int(dt.datetime(2024, 1, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp() * 1000)
    mar = int(dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert months_of([_row(jan_end)]) == {dt.date(2024, 1, 1)}
    # Only the months that hold rows, not every month in between.
    assert months_of([_row(jan_end), _row(mar)]) == {dt.date(2024, 1, 1), dt.date(2024, 3, 1)}
    assert months_of([]) == set()


def test_config_defaults_and_environment() -> None:
    cfg = config.load({"SEGMENTS_ARCHIVER_NAME": "a1"})
    assert cfg.consumer == "a1" and cfg.batch_size == config.BATCH_SIZE
    assert cfg.claim_idle_ms == config.CLAIM_IDLE_MS and cfg.trim
    cfg = config.load(
        {
            "SEGMENTS_ARCHIVER_BATCH_SIZE": "100",
            "SEGMENTS_ARCHIVER_BLOCK_MS": "50",
            "SEGMENTS_ARCHIVER_CLAIM_IDLE_MS": "1000",
            "SEGMENTS_ARCHIVER_TRIM": "false",
            "SEGMENTS_ARCHIVER_RETRY_MAX_S": "1",
        }
    )
    assert (cfg.batch_size, cfg.block_ms, cfg.claim_idle_ms, cfg.trim) == (100, 50, 1000, False)
    assert cfg.consumer  # the host name by default


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEGMENTS_ARCHIVER_BATCH_SIZE", "0"),
        ("SEGMENTS_ARCHIVER_BATCH_SIZE", "many"),
        ("SEGMENTS_ARCHIVER_RETRY_MIN_S", "-1"),
        ("SEGMENTS_ARCHIVER_TRIM", "maybe"),
    ],
)
def test_config_rejects_bad_values_naming_them(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        config.load({name: value})


def test_fault_points() -> None:
    with pytest.raises(ValueError, match="unknown crash point"):
        faults.arm("nowhere")
    faults.arm("after_copy:3")
    faults.reached("after_commit")  # another point: nothing happens
    faults.reached("after_copy")
    faults.reached("after_copy")  # 2 of 3: still alive
    faults.arm(None)
    faults.reached("after_copy")


def test_group_state_decides_archived_and_floor() -> None:
    base = GroupState(stream="s", exists=True, last_generated=(10, 0), last_delivered=(10, 0))
    assert base.archived_through((10, 0)) and base.floor == (10, 1)
    pending = GroupState(
        stream="s",
        exists=True,
        last_generated=(10, 0),
        last_delivered=(10, 0),
        pending=2,
        pending_min=(7, 3),
    )
    assert not pending.archived_through((10, 0))
    assert pending.archived_through((7, 2))
    assert pending.floor == (7, 3)
    behind = GroupState(stream="s", exists=True, last_generated=(10, 0), last_delivered=(8, 0))
    assert not behind.archived_through((9, 0)) and behind.archived_through((8, 0))
    missing = GroupState(stream="s", exists=False, last_generated=(10, 0))
    assert not missing.archived_through((1, 0)) and missing.floor == (0, 0)
    assert missing.archived_through((0, 0))
    assert parse_id(b"12-3") == (12, 3) and parse_id("12") == (12, 0)
