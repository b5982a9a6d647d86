"""The docs say what the code does: the key table of docs/design.md against
``segments_core.keys`` (names, and types on a live Redis), test names the docs
cite, and links that stay inside the repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from segments_core.keys import GLOBAL, Keyspace, dead_letter_key
from service.app import create_app
from service.settings import Settings
from tests.support.cluster import client as redis_client

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHARD = "{sNN}"
TYPES = {"sorted set": "zset"}
"""The doc's words for Redis's TYPE names, where they differ."""


def documented_keys() -> dict[str, str]:
    """``key pattern -> Redis type`` from the key table of docs/design.md."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("| key | type | holds |") :].split("\n\n")[0]
    keys = {}
    for row in table.splitlines()[2:]:
        name, kind = (cell.strip() for cell in row.strip("|").split("|")[:2])
        keys[name.strip("`")] = TYPES.get(kind, kind)
    return keys


def code_keys() -> set[str]:
    """Every key name ``segments_core.keys`` builds, shards as ``{sNN}``."""
    one = Keyspace(1).shard_keys[0]
    shard = {
        getattr(one, name).replace(one.tag, SHARD)
        for name in one.__dataclass_fields__
        if name not in ("shard", "tag", "user_prefix")
    }
    user = one.user(0).replace(one.tag, SHARD).removesuffix("0") + "<uid>"
    dead = dead_letter_key("<stream>")
    return {*(getattr(GLOBAL, f) for f in GLOBAL.__dataclass_fields__), *shard, user, dead}


def test_the_key_table_names_every_key_the_code_builds() -> None:
    documented, built = set(documented_keys()), code_keys()
    assert documented == built, (
        f"in docs/design.md, not in segments_core/keys.py: {sorted(documented - built)}; "
        f"in segments_core/keys.py, not in docs/design.md: {sorted(built - documented)}"
    )


def _pattern(key: str) -> re.Pattern[str]:
    body = re.escape(key).replace(re.escape(SHARD), r"\{s\d+\}").replace(re.escape("<uid>"), r"\d+")
    return re.compile(body.replace(re.escape("<stream>"), ".+"))


def test_the_key_table_types_are_those_in_redis(clean_redis_url: str) -> None:
    # A workload that leaves most keys behind: plain and percent segments, a
    # deadline, a deleted segment, known users.
    with TestClient(create_app(Settings(redis_url=clean_redis_url))) as client:
        client.post("/api/v1/users", json={"user_ids": list(range(1, 200))})
        for body in ({"slug": "PLAIN"}, {"slug": "HALF", "percent": 50}, {"slug": "GONE"}):
            assert client.post("/api/v1/segments", json=body).status_code == 201
        change = {"add": ["PLAIN", "GONE", {"slug": "HALF", "ttl_seconds": 3600}]}
        assert client.post("/api/v1/users/5/segments", json=change).status_code == 200
        assert client.delete("/api/v1/segments/GONE").status_code == 204
    r: Any = redis_client(clean_redis_url, decode_responses=True)
    try:
        actual = {key: r.type(key) for key in r.scan_iter(count=1000)}
    finally:
        r.close()
    documented = documented_keys()
    checked = set()
    for key, kind in actual.items():
        matches = [name for name in documented if _pattern(name).fullmatch(key)]
        assert matches, f"{key} ({kind}) is not in the key table of docs/design.md"
        # The most specific pattern (`<stream>:dead` also matches `{g}:restore:lock`).
        name = min(matches, key=lambda m: m.count("<"))
        assert documented[name] == kind, f"{key}: docs/design.md says {documented[name]}"
        checked.add(name)
    assert len(checked) >= 15, sorted(checked)  # the workload reached most of the table


def test_tests_the_docs_cite_exist() -> None:
    defined = {
        match
        for path in (ROOT / "tests").rglob("*.py")
        for match in re.findall(r"def (test_\w+)", path.read_text())
    }
    for doc in DOCS:
        cited = set(re.findall(r"`(?:[\w/.]+::)?(test_\w+)`", doc.read_text()))
        assert cited <= defined, f"{doc.name} cites tests that do not exist: {cited - defined}"


def test_docs_link_nothing_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            assert "://" not in target, f"{doc.name} links outside the repository: {target}"
            path = target.split("#")[0]
            if not path:
                continue  # an anchor on the same page
            resolved = (doc.parent / path).resolve()
            assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
            assert resolved.exists(), f"{doc.name}: {target} does not exist"
        assert not re.search(r"`\.\./", text), f"{doc.name} names a path outside the repository"
