"""Sampling profiles of the API workers during a scenario, with py-spy.

``py-spy record --format raw`` writes collapsed stacks (``a;b;c count``),
one file per worker; ``top`` folds them into the functions where the time
goes: *self* (the sample's innermost frame) and *total* (anywhere on the
stack, each function counted once per sample). Samples of idle threads are
not recorded, so shares are of the CPU time the workers used.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 200
"""Samples per second and worker: fine enough for a 10 s run, light on the CPU."""
BACKGROUND_THREAD = "Thread._bootstrap (threading.py)"
"""Root frame of every thread but the main one (where the event loop runs)."""
INSTALL_HINT = "py-spy is not installed: `pip install py-spy` (into the service's virtualenv)"

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


class ProfileError(RuntimeError):
    """py-spy is missing or could not attach."""


def find_py_spy() -> str:
    path = shutil.which("py-spy")
    if path is None:
        # Next to this interpreter (a virtualenv not on PATH).
        import sys

        candidate = Path(sys.executable).parent / "py-spy"
        if candidate.is_file():
            return str(candidate)
        raise ProfileError(INSTALL_HINT)
    return path


@dataclass
class Recording:
    procs: list[subprocess.Popen[bytes]]
    files: list[Path]

    def wait(self, timeout_s: float) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                proc.wait(5)


def start(pids: Iterable[int], out_dir: Path, duration_s: float, label: str) -> Recording:
    """Start one ``py-spy record`` per pid, in the background.

    py-spy pauses a worker for each sample (a few microseconds, RATE_HZ times a
    second): the profiled run is a little slower, but every stack is whole
    (``--nonblocking`` tears about a quarter of them at this load). ``--gil``:
    only the thread holding the GIL is sampled, so threads parked in a wait
    (logging's queue listener, uvicorn's supervisor pings) do not show up as
    busy, and the shares are of the Python CPU time of the worker."""
    exe = find_py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Recording([], [])
    for pid in pids:
        path = out_dir / f"profile-{label}-{pid}.txt"
        log = (out_dir / f"profile-{label}-{pid}.log").open("wb")
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(duration_s))),
                "--rate",
                str(RATE_HZ),
                "--format",
                "raw",
                "--gil",
                "--output",
                str(path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        rec.procs.append(proc)
        rec.files.append(path)
    return rec


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``; lines are dropped so that
    a function's samples add up."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    file = m.group("file")
    short = "/".join(file.split("/")[-2:]) if "site-packages" not in file else _package(file)
    return f"{m.group('func')} ({short})"


def _package(file: str) -> str:
    tail = file.split("site-packages/", 1)[1]
    parts = tail.split("/")
    return "/".join([parts[0], parts[-1]]) if len(parts) > 1 else tail


@dataclass(frozen=True, slots=True)
class Row:
    function: str
    self_share: float
    total_share: float


def parse_raw(lines: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Collapsed stacks -> sample counts (root first); the process/thread frames go."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        stacks[tuple(frame_name(f) for f in frames)] += int(count)
    return stacks


def top(stacks: Counter[tuple[str, ...]], n: int = 25) -> tuple[int, list[Row], list[Row]]:
    """(samples, top by self share, top by total share)."""
    total = sum(stacks.values())
    if total == 0:
        return 0, [], []
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        if frames:
            own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count

    def rows(counter: Counter[str]) -> list[Row]:
        return [
            Row(name, own[name] / total, inclusive[name] / total)
            for name, _ in counter.most_common(n)
        ]

    return total, rows(own), rows(inclusive)


def summarize(files: Iterable[Path], n: int = 25) -> str:
    """A plain-text summary of the profiles in ``files`` (merged): the event-loop
    thread's functions; other threads are one line."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in files:
        if path.is_file():
            stacks.update(parse_raw(path.read_text(errors="replace").splitlines()))
    background = sum(c for frames, c in stacks.items() if BACKGROUND_THREAD in frames)
    main = Counter({f: c for f, c in stacks.items() if BACKGROUND_THREAD not in f})
    samples, by_self, by_total = top(main, n)
    if samples == 0:
        return "no samples (did py-spy attach? see the profile-*.log files)"
    out = [
        f"{samples:,} samples of the main (event-loop) threads"
        f" (other threads: {background:,} more samples)",
        "",
        "self %  total %  function",
    ]
    out += [f"{r.self_share:6.1%}  {r.total_share:7.1%}  {r.function}" for r in by_self]
    out += ["", "total %  self %  function (inclusive)"]
    out += [f"{r.total_share:7.1%}  {r.self_share:6.1%}  {r.function}" for r in by_total]
    return "\n".join(out)
