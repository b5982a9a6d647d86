"""Running wrk, the load generator, and reading what its Lua ``done()`` prints.

Every scenario script (``bench/lua/*.lua``) prints one line
``BENCH_RESULT {json}``; parsing that is more robust than wrk's text report.
wrk's own CPU time comes from ``wait4`` on the child, so it is exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import msgspec

LUA_DIR = Path(__file__).parent / "lua"
RESULT_PREFIX = "BENCH_RESULT "
TIMEOUT_S = 2
"""wrk's per-request timeout: a request slower than this counts as an error."""
GRACE_S = 30.0
"""How long past its duration wrk may run before the bench kills it."""

INSTALL_HINT = (
    "wrk (the HTTP load generator) is not installed. On Debian/Ubuntu: "
    "`sudo apt-get install -y wrk`; on macOS: `brew install wrk`."
)


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed no result line."""


class Errors(msgspec.Struct, kw_only=True):
    connect: int = 0
    read: int = 0
    write: int = 0
    status: int = 0
    """Responses with status >= 400."""
    timeout: int = 0

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.status + self.timeout


class Latency(msgspec.Struct, kw_only=True):
    min: float
    mean: float
    max: float
    stdev: float
    percentiles: dict[str, float]
    """Percentile ("50", "99.9", ...) -> microseconds."""


class WrkOutput(msgspec.Struct, kw_only=True):
    """The JSON line of ``common.lua``'s ``done()``; times in microseconds."""

    duration_us: int
    requests: int
    bytes: int
    errors: Errors
    latency_us: Latency


class WrkRun(msgspec.Struct, kw_only=True):
    """One wrk run: its figures, and the CPU wrk itself used."""

    output: WrkOutput
    cpu_s: float
    wall_s: float
    command: list[str]

    @property
    def rps(self) -> float:
        return self.output.requests / (self.output.duration_us / 1e6)

    def percentile_ms(self, p: str) -> float:
        return self.output.latency_us.percentiles[p] / 1000.0


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(INSTALL_HINT)
    return path


def parse_output(text: str) -> WrkOutput:
    """The result line of a wrk run's stdout (the last one if there are several)."""
    lines = [ln for ln in text.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        raise WrkError("wrk printed no BENCH_RESULT line; its output was:\n" + text[-2000:])
    try:
        return msgspec.json.decode(lines[-1][len(RESULT_PREFIX) :], type=WrkOutput)
    except msgspec.DecodeError as exc:
        raise WrkError(f"unreadable wrk result line: {exc}") from None


def script_path(name: str) -> Path:
    path = LUA_DIR / f"{name}.lua"
    if not path.is_file():
        raise WrkError(f"no wrk script {path}")
    return path


def command(
    wrk: str,
    url: str,
    script: Path,
    *,
    duration_s: float,
    connections: int,
    threads: int,
    args: dict[str, str | int | float],
) -> list[str]:
    threads = max(1, min(threads, connections))
    return [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={TIMEOUT_S}s",
        "-s",
        str(script),
        url,
        "--",
        *(f"{k}={v}" for k, v in args.items()),
    ]


def run(cmd: list[str], duration_s: float) -> WrkRun:
    """Run wrk to the end (killed past ``duration_s + GRACE_S``); blocking."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        killer = threading.Timer(duration_s + GRACE_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}:\n{text[-2000:]}")
    return WrkRun(
        output=parse_output(text),
        cpu_s=usage.ru_utime + usage.ru_stime,
        wall_s=wall,
        command=cmd,
    )
