"""Every endpoint of SPEC §4 Segments and Users, and every error row, over HTTP.

Real Redis underneath (the ``client`` fixtures); each test checks both the
answer and that a refused request changed nothing.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import SHARD_KEYS
from tests.support.cluster import client as redis_client
from tests.support.cluster import every_master

MAX_ID = 2**63 - 1


def events(redis_url: str) -> list[dict[str, str]]:
    r = redis_client(redis_url, decode_responses=True)
    out: list[dict[str, str]] = []
    for k in SHARD_KEYS:
        out += [fields for _, fields in r.xrange(k.events)]
    r.close()
    return sorted(out, key=lambda e: (int(e["t"]), e["u"], e["s"]))


def snapshot(redis_url: str) -> dict[str, Any]:
    """Every key and its value: to prove a refused request changed nothing."""
    r = redis_client(redis_url)
    state = {key: r.dump(key) for key in sorted(r.keys("*", **every_master(r)))}
    r.close()
    return state


# --- segments -----------------------------------------------------------------


def test_create_get_list_segments(client: Any) -> None:
    r = client.post("/api/v1/segments", json={"slug": "B_seg", "description": "two"})
    assert r.status_code == 201
    body = r.json()
    assert body["slug"] == "B_seg"
    assert body["description"] == "two"
    assert body["percent"] is None
    assert body["members"] == 0
    created = datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=1)

    assert client.post("/api/v1/segments", json={"slug": "A.seg-1"}).status_code == 201
    listed = client.get("/api/v1/segments").json()["segments"]
    assert [s["slug"] for s in listed] == ["A.seg-1", "B_seg"]
    assert client.get("/api/v1/segments/B_seg").json() == body


def test_create_existing_slug_is_409_and_changes_nothing(client: Any, clean_redis_url: str) -> None:
    client.post("/api/v1/segments", json={"slug": "X", "description": "first"})
    before = snapshot(clean_redis_url)
    r = client.post("/api/v1/segments", json={"slug": "X", "description": "second"})
    assert r.status_code == 409
    assert "X" in r.json()["detail"]
    assert snapshot(clean_redis_url) == before


def test_slugs_are_case_sensitive(client: Any) -> None:
    assert client.post("/api/v1/segments", json={"slug": "abc"}).status_code == 201
    assert client.post("/api/v1/segments", json={"slug": "ABC"}).status_code == 201
    assert client.get("/api/v1/segments/Abc").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"slug": ""},
        {"slug": "x" * 101},
        {"slug": "-x"},
        {"slug": "=SUM(A1)"},
        {"slug": "+x"},
        {"slug": "@x"},
        {"slug": "a b"},
        {"slug": "a/b"},
        {"slug": "é"},
        {"slug": 5},
        {},
        {"slug": "ok", "percent": 0},
        {"slug": "ok", "percent": 100.5},
        {"slug": "ok", "percent": 1.234},
        {"slug": "ok", "unknown": 1},
        {"slug": "ok", "description": 7},
        [],
        "slug",
    ],
)
def test_create_bad_body_is_400(client: Any, clean_redis_url: str, body: Any) -> None:
    before = snapshot(clean_redis_url)
    r = client.post("/api/v1/segments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"]
    assert snapshot(clean_redis_url) == before


def test_slug_of_100_characters_is_fine(client: Any) -> None:
    slug = "S" * 100
    assert client.post("/api/v1/segments", json={"slug": slug}).status_code == 201
    assert client.get(f"/api/v1/segments/{slug}").status_code == 200


def test_malformed_json_is_400(client: Any) -> None:
    for raw in (b"{", b"not json", b'{"slug": "a",}', b"\xff\xfe"):
        r = client.post(
            "/api/v1/segments", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, (raw, r.text)


def test_body_over_one_mib_is_413(client: Any, clean_redis_url: str) -> None:
    before = snapshot(clean_redis_url)
    big = b'{"user_ids": [' + b"1," * (600 * 1024) + b"1]}"
    r = client.post("/api/v1/users", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert snapshot(clean_redis_url) == before


def test_get_unknown_segment_is_404_and_bad_slug_400(client: Any) -> None:
    assert client.get("/api/v1/segments/NOPE").status_code == 404
    assert client.get("/api/v1/segments/=NOPE").status_code == 400
    assert client.patch("/api/v1/segments/NOPE", json={"description": "d"}).status_code == 404
    assert client.delete("/api/v1/segments/NOPE").status_code == 404


def test_patch_description(client: Any, clean_redis_url: str) -> None:
    client.post("/api/v1/segments", json={"slug": "P", "description": "old"})
    r = client.patch("/api/v1/segments/P", json={"description": "new"})
    assert r.status_code == 200
    assert r.json()["description"] == "new"
    assert client.get("/api/v1/segments/P").json()["description"] == "new"
    before = snapshot(clean_redis_url)
    for bad in ({"description": 5}, {"percent": -1}, {"slug": "Q"}, []):
        assert client.patch("/api/v1/segments/P", json=bad).status_code == 400
    assert snapshot(clean_redis_url) == before


def test_delete_segment_removes_members_with_history(
    client: Any, clean_redis_url: str
) -> None:
    client.post("/api/v1/segments", json={"slug": "D"})
    client.post("/api/v1/segments", json={"slug": "K"})
    for uid in (1, 2, 3):
        r = client.post(f"/api/v1/users/{uid}/segments", json={"add": ["D", "K"]})
        assert r.status_code == 200
    assert client.get("/api/v1/segments/D").json()["members"] == 3

    assert client.delete("/api/v1/segments/D").status_code == 204
    assert client.get("/api/v1/segments/D").status_code == 404
    assert [s["slug"] for s in client.get("/api/v1/segments").json()["segments"]] == ["K"]
    for uid in (1, 2, 3):
        assert client.get(f"/api/v1/users/{uid}/segments").json()["segments"] == ["K"]
    removals = [e for e in events(clean_redis_url) if e["o"] == "remove"]
    assert sorted(e["u"] for e in removals) == ["1", "2", "3"]
    assert {(e["s"], e["r"]) for e in removals} == {("D", "segment_deleted")}

    # A slug created again starts empty.
    client.post("/api/v1/segments", json={"slug": "D"})
    assert client.get("/api/v1/segments/D").json()["members"] == 0
    assert client.get("/api/v1/users/1/segments").json()["segments"] == ["K"]
    # ... and a change naming it after the deletion refers to the new one.
    r = client.post("/api/v1/users/1/segments", json={"add": ["D"]})
    assert r.json()["segments"] == ["D", "K"]


# --- users ----------------------------------------------------------------------


def test_register_users_counts_new_ones(client: Any) -> None:
    r = client.post("/api/v1/users", json={"user_ids": [1, 2, 3]})
    assert r.status_code == 200
    assert r.json() == {"created": 3}
    assert client.post("/api/v1/users", json={"user_ids": [3, 4, 4]}).json() == {"created": 1}
    assert client.post("/api/v1/users", json={"user_ids": [MAX_ID]}).json() == {"created": 1}


@pytest.mark.parametrize(
    "body",
    [
        {"user_ids": []},
        {"user_ids": [0]},
        {"user_ids": [-5]},
        {"user_ids": [MAX_ID + 1]},
        {"user_ids": [1.5]},
        {"user_ids": list(range(1, 10_002))},
        {"ids": [1]},
        {},
    ],
)
def test_register_users_bad_body_is_400(client: Any, clean_redis_url: str, body: Any) -> None:
    before = snapshot(clean_redis_url)
    assert client.post("/api/v1/users", json=body).status_code == 400
    assert snapshot(clean_redis_url) == before


def test_unknown_user_has_no_segments(client: Any) -> None:
    r = client.get("/api/v1/users/424242/segments")
    assert r.status_code == 200
    assert r.json() == {"user_id": 424242, "segments": []}
    assert client.get(f"/api/v1/users/{MAX_ID}/segments").json()["segments"] == []


@pytest.mark.parametrize("uid", ["0", "-1", str(MAX_ID + 1), "abc", "1.5"])
def test_bad_user_id_in_path_is_400(client: Any, uid: str) -> None:
    assert client.get(f"/api/v1/users/{uid}/segments").status_code == 400
    assert client.post(f"/api/v1/users/{uid}/segments", json={"add": []}).status_code == 400
    assert client.delete(f"/api/v1/users/{uid}").status_code == 400


def test_change_adds_and_removes_atomically(client: Any, clean_redis_url: str) -> None:
    for slug in ("A", "B", "C"):
        client.post("/api/v1/segments", json={"slug": slug})
    r = client.post("/api/v1/users/7/segments", json={"add": ["C", "A"]})
    assert r.status_code == 200
    assert r.json() == {"user_id": 7, "segments": ["A", "C"]}
    r = client.post("/api/v1/users/7/segments", json={"add": ["B"], "remove": ["A"]})
    assert r.json() == {"user_id": 7, "segments": ["B", "C"]}
    got = [(e["u"], e["s"], e["o"], e["r"]) for e in events(clean_redis_url)]
    assert sorted(got) == sorted(
        [
            ("7", "C", "add", "manual"),
            ("7", "A", "add", "manual"),
            ("7", "A", "remove", "manual"),
            ("7", "B", "add", "manual"),
        ]
    )


def test_repeated_add_and_absent_remove_record_nothing(client: Any, clean_redis_url: str) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    client.post("/api/v1/segments", json={"slug": "B"})
    client.post("/api/v1/users/7/segments", json={"add": ["A"]})
    n = len(events(clean_redis_url))
    r = client.post("/api/v1/users/7/segments", json={"add": ["A"], "remove": ["B"]})
    assert r.json()["segments"] == ["A"]
    assert len(events(clean_redis_url)) == n


def test_change_naming_unknown_segments_is_404_and_applies_nothing(
    client: Any, clean_redis_url: str
) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    client.post("/api/v1/users/7/segments", json={"add": ["A"]})
    before = snapshot(clean_redis_url)
    r = client.post(
        "/api/v1/users/7/segments", json={"add": ["NOPE1", "A"], "remove": ["A", "NOPE2"]}
    )
    assert r.status_code == 400  # A in both lists is refused first
    r = client.post("/api/v1/users/7/segments", json={"add": ["NOPE1"], "remove": ["A", "NOPE2"]})
    assert r.status_code == 404
    assert "NOPE1" in r.json()["detail"]
    assert "NOPE2" in r.json()["detail"]
    assert r.json()["extra"]["unknown"] == ["NOPE1", "NOPE2"]
    assert snapshot(clean_redis_url) == before
    # An unknown user named in a refused change stays unknown.
    r = client.post("/api/v1/users/8/segments", json={"add": ["NOPE1"]})
    assert r.status_code == 404
    assert snapshot(clean_redis_url) == before


@pytest.mark.parametrize(
    "body",
    [
        {"add": ["A"], "remove": ["A"]},
        {"add": [{"slug": "A", "ttl_seconds": 0}]},
        {"add": [{"slug": "A", "ttl_seconds": -3}]},
        {"add": [{"slug": "A", "ttl_seconds": 1.5}]},
        {"add": [{"slug": "A", "ttl_seconds": 5, "expires_at": "2999-01-01T00:00:00Z"}]},
        {"add": [{"slug": "A", "expires_at": "2000-01-01T00:00:00Z"}]},
        {"add": [{"slug": "A", "expires_at": "2999-01-01T00:00:00"}]},
        {"add": [{"slug": "A", "expires_at": "tomorrow"}]},
        {"add": [{"ttl_seconds": 5}]},
        {"add": [{"slug": "A", "extra": 1}]},
        {"add": ["A", "A"]},
        {"add": "A"},
        {"add": [5]},
        {"remove": ["=A"]},
        {"add": ["A"], "unknown": []},
    ],
)
def test_bad_change_is_400_and_applies_nothing(
    client: Any, clean_redis_url: str, body: Any
) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    before = snapshot(clean_redis_url)
    r = client.post("/api/v1/users/7/segments", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["detail"]
    assert snapshot(clean_redis_url) == before


def test_deadlines_ttl_and_expires_at(
    clocked_client: Any, clock: Any, clean_redis_url: str
) -> None:
    client = clocked_client
    for slug in ("T", "E", "P"):
        client.post("/api/v1/segments", json={"slug": slug})
    expires = datetime.fromtimestamp((clock() + 120_000) / 1000, tz=UTC)
    r = client.post(
        "/api/v1/users/9/segments",
        json={
            "add": [
                {"slug": "T", "ttl_seconds": 60},
                {"slug": "E", "expires_at": expires.isoformat()},
                {"slug": "P"},
            ]
        },
    )
    assert r.json()["segments"] == ["E", "P", "T"]
    expanded = client.get("/api/v1/users/9/segments?expand=true").json()["segments"]
    by_slug = {m["slug"]: m["expires_at"] for m in expanded}
    assert by_slug["P"] is None
    assert datetime.fromisoformat(by_slug["T"]).timestamp() * 1000 == pytest.approx(
        clock() + 60_000, abs=1
    )
    assert datetime.fromisoformat(by_slug["E"]) == expires

    clock.advance(60_000)  # T's deadline is now: gone for every read, swept or not
    assert client.get("/api/v1/users/9/segments").json()["segments"] == ["E", "P"]
    assert client.post("/api/v1/users/lookup", json={"user_ids": [9]}).json()["users"][0][
        "segments"
    ] == ["E", "P"]
    assert client.get("/api/v1/segments/T").json()["members"] == 0
    ttl = [e for e in events(clean_redis_url) if e["r"] == "ttl"]
    assert [(e["s"], int(e["t"])) for e in ttl] == [("T", clock())]


def test_add_again_sets_the_new_deadline(clocked_client: Any, clock: Any) -> None:
    client = clocked_client
    client.post("/api/v1/segments", json={"slug": "T"})
    client.post("/api/v1/users/9/segments", json={"add": [{"slug": "T", "ttl_seconds": 10}]})
    client.post("/api/v1/users/9/segments", json={"add": [{"slug": "T", "ttl_seconds": 100}]})
    clock.advance(50_000)
    assert client.get("/api/v1/users/9/segments").json()["segments"] == ["T"]
    client.post("/api/v1/users/9/segments", json={"add": ["T"]})  # no deadline any more
    clock.advance(1_000_000)
    assert client.get("/api/v1/users/9/segments").json()["segments"] == ["T"]


def test_delete_user_is_idempotent_and_recorded(client: Any, clean_redis_url: str) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    client.post("/api/v1/segments", json={"slug": "B"})
    client.post("/api/v1/users/5/segments", json={"add": ["A", "B"]})
    assert client.delete("/api/v1/users/5").status_code == 204
    assert client.get("/api/v1/users/5/segments").json()["segments"] == []
    assert client.get("/api/v1/segments/A").json()["members"] == 0
    n = len(events(clean_redis_url))
    assert client.delete("/api/v1/users/5").status_code == 204
    assert client.delete("/api/v1/users/6").status_code == 204
    assert len(events(clean_redis_url)) == n
    removed = [(e["s"], e["r"]) for e in events(clean_redis_url) if e["o"] == "remove"]
    assert sorted(removed) == [("A", "user_deleted"), ("B", "user_deleted")]


def test_batch_lookup_in_request_order(client: Any) -> None:
    client.post("/api/v1/segments", json={"slug": "A"})
    client.post("/api/v1/segments", json={"slug": "B"})
    client.post("/api/v1/users/2/segments", json={"add": ["B", "A"]})
    client.post("/api/v1/users/3/segments", json={"add": ["B"]})
    r = client.post("/api/v1/users/lookup", json={"user_ids": [3, 99, 2, 3]})
    assert r.status_code == 200
    assert r.json() == {
        "users": [
            {"user_id": 3, "segments": ["B"]},
            {"user_id": 99, "segments": []},
            {"user_id": 2, "segments": ["A", "B"]},
            {"user_id": 3, "segments": ["B"]},
        ]
    }


@pytest.mark.parametrize(
    "body",
    [{"user_ids": []}, {"user_ids": list(range(1, 1002))}, {"user_ids": [0]}, {"user_ids": ["x"]}],
)
def test_batch_lookup_bad_body_is_400(client: Any, body: Any) -> None:
    assert client.post("/api/v1/users/lookup", json=body).status_code == 400


def test_operations_endpoints(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    # No DATABASE_URL in this fixture: not ready, and the answer says why
    # (tests/test_ops.py covers every check, ready and not).
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "ok"
    assert ready.json()["checks"]["postgres"] == "not configured (DATABASE_URL)"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "segments_known_users" in metrics.text


def test_openapi_documents_every_endpoint_and_swagger_is_local(client: Any) -> None:
    schema = client.get("/schema/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/segments", "post"),
        ("/api/v1/segments", "get"),
        ("/api/v1/segments/{slug}", "get"),
        ("/api/v1/segments/{slug}", "patch"),
        ("/api/v1/segments/{slug}", "delete"),
        ("/api/v1/users", "post"),
        ("/api/v1/users/{user_id}", "delete"),
        ("/api/v1/users/{user_id}/segments", "get"),
        ("/api/v1/users/{user_id}/segments", "post"),
        ("/api/v1/users/lookup", "post"),
    ]:
        assert method in paths[path], (path, method)
    assert "404" in paths["/api/v1/users/{user_id}/segments"]["post"]["responses"]
    assert "409" in paths["/api/v1/segments"]["post"]["responses"]
    page = client.get("/schema/swagger")
    assert page.status_code == 200
    assert "cdn." not in page.text and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        assert client.get(f"/schema/assets/{asset}").status_code == 200


def test_redis_down_answers_503_quickly() -> None:
    from litestar.testing import TestClient

    from segments_dev.embedded import EmbeddedRedis  # a private server we may stop
    from service.app import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp))
        server.start()
        try:
            app = create_app(Settings(redis_url=server.url))
            with TestClient(app) as client:
                assert client.post("/api/v1/segments", json={"slug": "A"}).status_code == 201
                server.stop()
                r = client.get("/api/v1/users/1/segments")
                assert r.status_code == 503
                assert r.headers["retry-after"]
                assert client.get("/readyz").status_code == 503
                server.start()
                # Recovers by itself: the first request after the restart works.
                r = client.post("/api/v1/segments", json={"slug": "B"})
                assert r.status_code == 201
        finally:
            server.stop()


def test_a_user_in_thousands_of_segments(client: Any, clean_redis_url: str) -> None:
    """Beyond what one Lua unpack() can take (8,000 values): reads still work.

    The memberships are written straight into the documented layout
    (docs/design.md) because creating 9,000 segments over HTTP takes long.
    """
    from tests.support import for_user

    slugs = [f"S{i:05d}" for i in range(9_000)]
    k = for_user(1)
    r = redis_client(clean_redis_url)
    pipe = r.pipeline(transaction=False)
    for n, slug in enumerate(slugs, start=1):
        pipe.hset(k.seg_id, slug, n)
        pipe.hset(k.seg_slug, n, slug)
        pipe.hset(k.user(1), n, 0)
    pipe.sadd(k.users, 1)
    pipe.execute()
    r.close()
    assert client.get("/api/v1/users/1/segments").json()["segments"] == slugs
    lookup = client.post("/api/v1/users/lookup", json={"user_ids": [1]}).json()
    assert lookup["users"][0]["segments"] == slugs
    changed = client.post("/api/v1/users/1/segments", json={"remove": ["S00000"]})
    assert changed.json()["segments"] == slugs[1:]
