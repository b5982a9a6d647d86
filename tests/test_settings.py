"""Settings declared once: parsing, ``--help`` and the docs' tables agree with
the declarations on the fields of ``Settings`` and ``ArchiverConfig``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import msgspec
import pytest

from archiver import faults
from archiver.config import ArchiverConfig
from segments_cli.main import build_parser
from segments_core import config
from service.settings import Settings, Tokens, load

ROOT = Path(__file__).resolve().parent.parent


def table_rows(markdown: str, first_row: str) -> list[str]:
    """The rows of the Markdown table that holds ``first_row``, from that row on."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_row))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_readme_configuration_table_is_the_declarations() -> None:
    expected = config.markdown_rows(Settings)
    rows = table_rows((ROOT / "README.md").read_text(), "| `REDIS_URL` |")
    documented = [row for row in rows if not row.startswith("| `SEGMENTS_ARCHIVER_*` |")]
    assert documented == expected, (
        "README.md's configuration table disagrees with service/settings.py; its rows should be:\n"
        + "\n".join(expected)
    )
    assert any(row.startswith("| `SEGMENTS_ARCHIVER_*` |") for row in rows)


def test_history_doc_archiver_table_is_the_declarations() -> None:
    expected = config.markdown_rows(ArchiverConfig)
    rows = table_rows((ROOT / "docs/history.md").read_text(), "| `SEGMENTS_ARCHIVER_NAME` |")
    assert rows == expected, (
        "docs/history.md's archiver table disagrees with archiver/config.py; its rows should be:\n"
        + "\n".join(expected)
    )


def test_each_variable_is_declared_once() -> None:
    names = [s.env for cls in (Settings, ArchiverConfig) for _, s in config.declared(cls)]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]+", name) for name in names)


@pytest.mark.parametrize(("command", "cls"), [([], Settings), (["archiver"], ArchiverConfig)])
def test_help_lists_every_declared_variable(command: list[str], cls: type) -> None:
    parser = build_parser()
    if command:
        parser = next(
            action.choices[command[0]]
            for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
        )
    text = parser.format_help()
    for field, setting in config.declared(cls):
        assert setting.env in text
        default = config.default_text(field, setting, markdown=False).replace("`", "")
        assert f"(default: {default})" in " ".join(text.split())


def test_defaults_are_the_fields_defaults() -> None:
    # Nothing set: exactly the Struct's own defaults (written once, on the field).
    assert load({}) == Settings()
    assert config.load(ArchiverConfig, {}, consumer="a") == ArchiverConfig(consumer="a")
    assert ArchiverConfig().consumer  # the host name


class Parsed(str):
    """What the spy parser returns: the variable's name (and no ordering, so
    checks between fields pass)."""

    def __lt__(self, other: object) -> bool:
        return False


@pytest.mark.parametrize("cls", [Settings, ArchiverConfig])
def test_every_declared_variable_reaches_its_field(
    cls: type[msgspec.Struct], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "parse", lambda setting, raw: Parsed(setting.env))
    rows = config.declared(cls)
    loaded = config.load(cls, {setting.env: "x" for _, setting in rows})
    assert {f.name: getattr(loaded, f.name) for f, _ in rows} == {f.name: s.env for f, s in rows}


def test_values_parse() -> None:
    values = {
        "REDIS_URL": "redis://h:1/2",
        "DATABASE_URL": "postgresql://u@h/d",
        "PUBLIC_URL": "https://x.example/",
        "SEGMENTS_SIGNING_KEY": "k" * 20,
        "SEGMENTS_TOKENS": "r:read",
        "SEGMENTS_DATA_DIR": "/srv/segments",
        "SEGMENTS_REPORT_LINK_TTL": "61",
        "SEGMENTS_SHARDS": "4",
    }
    settings = load(values)
    assert settings.tokens == Tokens(read=frozenset({"r"}))
    assert settings.public_url == "https://x.example"
    assert settings.signing_key == b"k" * 20
    assert (settings.report_link_ttl_s, settings.shards) == (61, 4)
    assert str(settings.data_dir) == "/srv/segments"


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (Settings, "SEGMENTS_REPORT_LINK_TTL", "0.4"),
        (Settings, "SEGMENTS_SHARDS", "0"),
        (ArchiverConfig, "SEGMENTS_ARCHIVER_LINGER_MS", "-1"),
        (ArchiverConfig, "SEGMENTS_ARCHIVER_RETRY_MAX_S", "0.01"),
        (ArchiverConfig, "SEGMENTS_ARCHIVER_PARTITION_CHECK_S", "inf"),
        (ArchiverConfig, "SEGMENTS_ARCHIVER_METRICS_PORT", "port"),
    ],
)
def test_a_bad_value_names_its_variable(cls: type[msgspec.Struct], name: str, value: str) -> None:
    with pytest.raises(config.ConfigError, match=name):
        config.load(cls, {name: value})


def test_the_crash_hook_is_no_setting_and_inert_unless_its_variable_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "crash_at" not in ArchiverConfig.__struct_fields__
    assert faults.ENV not in {s.env for _, s in config.declared(ArchiverConfig)}
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.arm_from_environment()
    assert faults.HOOK.target is None
    faults.reached("after_read")  # disarmed: nothing happens
    monkeypatch.setenv(faults.ENV, "after_ack:2")
    try:
        faults.arm_from_environment()
        assert (faults.HOOK.target, faults.HOOK.remaining) == ("after_ack", 2)
    finally:
        faults.arm(None)
