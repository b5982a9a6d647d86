"""Sampling profiles of the API workers (and the archiver) during a scenario, with py-spy.

``py-spy record --format raw`` writes collapsed stacks (``a;b;c count``), one
file per process; ``summarize`` folds them into the functions where the time
goes: *self* (the sample's innermost frame) and *total* (anywhere on the stack,
once per sample). ``--gil`` samples only the thread holding the GIL, so the
shares are of the Python CPU time, and threads parked in a wait do not show.
py-spy pauses a process for each sample: a profiled run is a little slower.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 200
"""Samples per second and process: fine enough for a 10 s run, light on the CPU."""
BACKGROUND_THREAD = "Thread._bootstrap (threading.py)"
"""Root frame of every thread but the main one (where the event loop runs)."""
INSTALL_HINT = "py-spy is not installed: `pip install py-spy` (into the service's virtualenv)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class ProfileError(RuntimeError):
    """py-spy is missing."""


def find_py_spy() -> str:
    beside = Path(sys.executable).parent / "py-spy"  # a virtualenv not on PATH
    path = shutil.which("py-spy") or (str(beside) if beside.is_file() else None)
    if path is None:
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
    """One ``py-spy record`` per pid, in the background (its log next to its output)."""
    exe = find_py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = Recording([], [])
    every = ["--duration", str(max(1, round(duration_s))), "--rate", str(RATE_HZ)]
    for pid in pids:
        path = out_dir / f"profile-{label}-{pid}.txt"
        args = [exe, "record", "--pid", str(pid), *every, "--format", "raw", "--gil"]
        with (out_dir / f"profile-{label}-{pid}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*args, "--output", str(path)], stdout=log, stderr=subprocess.STDOUT
            )
        rec.procs.append(proc)
        rec.files.append(path)
    return rec


def frame_name(frame: str) -> str:
    """``func (/path/to/pkg/file.py:12)`` -> ``func (pkg/file.py)``; in site-packages the
    distribution and the file (``litestar/http.py``). Lines go, so a function's samples add up."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    file = m.group("file")
    if "site-packages/" in file:
        parts = file.split("site-packages/", 1)[1].split("/")
        short = "/".join([parts[0], parts[-1]]) if len(parts) > 1 else parts[0]
    else:
        short = "/".join(file.split("/")[-2:])
    return f"{m.group('func')} ({short})"


def parse_raw(lines: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Collapsed stacks -> sample counts (root first), without the process/thread frames."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            stacks[tuple(frame_name(f) for f in frames)] += int(count)
    return stacks


def shares(stacks: Counter[tuple[str, ...]]) -> tuple[int, Counter[str], Counter[str]]:
    """(samples, self samples by function, total samples by function)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        if frames:
            own[frames[-1]] += count
        inclusive.update(dict.fromkeys(set(frames), count))
    return sum(stacks.values()), own, inclusive


def summarize(files: Iterable[Path], n: int = 25) -> str:
    """The event-loop threads' functions of the profiles in ``files`` (merged), by self
    and by total share; other threads are one line."""
    stacks: Counter[tuple[str, ...]] = Counter()
    for path in files:
        if path.is_file():
            stacks.update(parse_raw(path.read_text(errors="replace").splitlines()))
    background = sum(c for frames, c in stacks.items() if BACKGROUND_THREAD in frames)
    samples, own, total = shares(
        Counter({f: c for f, c in stacks.items() if BACKGROUND_THREAD not in f})
    )
    if samples == 0:
        return "no samples (did py-spy attach? see the profile-*.log files)"
    out = [
        f"{samples:,} samples of the main (event-loop) threads"
        f" (other threads: {background:,} more samples)",
        "",
        "self %  total %  function",
        *(
            f"{own[f] / samples:6.1%}  {total[f] / samples:7.1%}  {f}"
            for f, _ in own.most_common(n)
        ),
        "",
        "total %  self %  function (inclusive)",
        *(
            f"{total[f] / samples:7.1%}  {own[f] / samples:6.1%}  {f}"
            for f, _ in total.most_common(n)
        ),
    ]
    return "\n".join(out)
