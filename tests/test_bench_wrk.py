"""wrk command lines, its result line, and the scenario scripts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import wrk
from bench.scenarios import LOAD

LINE = (
    'BENCH_RESULT {"duration_us":2000000,"requests":10000,"bytes":123456,'
    '"errors":{"connect":0,"read":1,"write":0,"status":3,"timeout":2},'
    '"latency_us":{"min":45,"mean":550.7,"max":8960,"stdev":307.6,'
    '"percentiles":{"50":469,"75":558,"90":756,"99":1573,"99.9":4138,"99.99":7828}}}'
)


def test_parse_reads_the_result_line_among_wrk_text() -> None:
    text = "Running 2s test @ http://127.0.0.1:8000\n  1 threads\n" + LINE + "\nRequests/sec: 1\n"
    out = wrk.parse_output(text)
    assert out.requests == 10_000
    assert out.errors.total == 6
    assert out.latency_us.percentiles["99.9"] == 4138
    assert out.latency_us.max == 8960


def test_parse_takes_the_last_result_line() -> None:
    first = LINE.replace('"requests":10000', '"requests":1')
    assert wrk.parse_output(first + "\n" + LINE).requests == 10_000


def test_parse_without_result_line_says_what_wrk_printed() -> None:
    with pytest.raises(wrk.WrkError, match="unable to connect"):
        wrk.parse_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_parse_rejects_a_truncated_line() -> None:
    with pytest.raises(wrk.WrkError, match="unreadable"):
        wrk.parse_output(LINE[:80])


def test_run_rates_from_the_parsed_duration() -> None:
    run = wrk.WrkRun(output=wrk.parse_output(LINE), cpu_s=0.5, wall_s=2.1, command=[])
    assert run.rps == pytest.approx(5000.0)
    assert run.percentile_ms("99") == pytest.approx(1.573)


def test_command_caps_threads_at_connections_and_passes_args() -> None:
    cmd = wrk.command(
        "/usr/bin/wrk",
        "http://127.0.0.1:8765",
        Path("/x/lookup.lua"),
        duration_s=9.6,
        connections=2,
        threads=4,
        args={"users": 100, "ids": "/tmp/z.ids"},
    )
    assert cmd[:4] == ["/usr/bin/wrk", "-t2", "-c2", "-d10s"]
    assert cmd[cmd.index("-s") + 1] == "/x/lookup.lua"
    assert cmd[-3:] == ["--", "users=100", "ids=/tmp/z.ids"]


def test_every_scenario_has_its_script() -> None:
    for scenario in LOAD.values():
        text = wrk.script_path(scenario.script).read_text()
        assert "common.lua" in text
        assert "request" in text
    assert "function done(" in (wrk.LUA_DIR / "common.lua").read_text()


def test_missing_script_is_an_error() -> None:
    with pytest.raises(wrk.WrkError):
        wrk.script_path("no-such-scenario")
