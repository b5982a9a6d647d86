"""Folding py-spy's collapsed stacks into the functions where the time goes."""

from __future__ import annotations

from pathlib import Path

from bench import profile

RAW = """\
process 1:"python -m service.cli serve";thread (0x1);run (asyncio/runners.py:118);handle (/v/lib/python3.11/site-packages/litestar/routes/http.py:81);user_segments (/w/service/store.py:271) 6
process 1:"python -m service.cli serve";thread (0x1);run (asyncio/runners.py:118);handle (/v/lib/python3.11/site-packages/litestar/routes/http.py:90) 3
process 1:"python -m service.cli serve";thread (0x1);run (asyncio/runners.py:118);send (/v/lib/python3.11/site-packages/uvicorn/protocols/http/httptools_impl.py:500) 1
process 1:"python -m service.cli serve";thread (0x2);_bootstrap (threading.py:995);Thread._bootstrap (threading.py:995);wait (threading.py:320) 4
garbage line
"""  # noqa: E501


def test_frame_names_drop_lines_and_long_paths() -> None:
    assert profile.frame_name("user_segments (/w/service/store.py:271)") == (
        "user_segments (service/store.py)"
    )
    assert (
        profile.frame_name(
            "send (/v/lib/python3.11/site-packages/uvicorn/protocols/http/httptools_impl.py:500)"
        )
        == "send (uvicorn/httptools_impl.py)"
    )
    assert profile.frame_name("<module> (<string>)") == "<module> (<string>)"


def test_parse_and_shares() -> None:
    stacks = profile.parse_raw(RAW.splitlines()[:3])
    samples, own, total = profile.shares(stacks)
    assert samples == 10
    assert own["user_segments (service/store.py)"] == 6
    assert own["handle (litestar/http.py)"] == 3
    assert total["handle (litestar/http.py)"] == 9
    assert total["run (asyncio/runners.py)"] == 10


def test_summary_of_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(RAW)
    text = profile.summarize([tmp_path / "a.txt", tmp_path / "missing.txt"], n=3)
    assert text.startswith("10 samples")
    assert "other threads: 4 more" in text
    assert "60.0%" in text
    assert profile.summarize([tmp_path / "missing.txt"]).startswith("no samples")
