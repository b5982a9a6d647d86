"""CPU time of each process taking part in a run, from psutil.

A *group* is a name ("api", "redis", ...) and a function listing its
processes now (a uvicorn master and its workers, a postmaster and its
backends). A snapshot maps each group to ``{pid: cpu seconds}``; the
difference of two snapshots over the wall time between them is the group's
CPU in percent of one core. Processes born in between count from zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psutil

Lister = Callable[[], list[psutil.Process]]
Snapshot = dict[str, dict[int, float]]


def tree(pid: int) -> Lister:
    """A process and all its descendants (looked up afresh at every snapshot)."""

    def list_() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return list_


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (needs the rights to see it)."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


def _cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def snapshot(groups: dict[str, Lister]) -> Snapshot:
    out: Snapshot = {}
    for name, lister in groups.items():
        seconds: dict[int, float] = {}
        for proc in lister():
            value = _cpu_seconds(proc)
            if value is not None:
                seconds[proc.pid] = value
        out[name] = seconds
    return out


def percent(before: Snapshot, after: Snapshot, wall_s: float) -> dict[str, float]:
    """CPU of each group between two snapshots, in percent of one core."""
    if wall_s <= 0:
        raise ValueError("wall_s must be positive")
    out: dict[str, float] = {}
    for name, now in after.items():
        then = before.get(name, {})
        used = sum(max(0.0, value - then.get(pid, 0.0)) for pid, value in now.items())
        out[name] = 100.0 * used / wall_s
    return out


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, every process)."""
    t = psutil.cpu_times()
    return float(
        sum(getattr(t, f) for f in t._fields if f not in ("idle", "iowait", "guest", "guest_nice"))
    )


def others(busy_before: float, busy_after: float, wall_s: float, ours: dict[str, float]) -> float:
    """Percent of one core used by processes outside ``ours`` over the window:
    other work on the machine, which a clean run keeps near zero."""
    total = 100.0 * (busy_after - busy_before) / wall_s
    return max(0.0, total - sum(ours.values()))


def rss_bytes(lister: Lister) -> int:
    """Resident memory of a group's processes, summed."""
    total = 0
    for proc in lister():
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total
