"""The folder where every process of one API deployment writes its metrics.

prometheus_client's multiprocess mode: each process (every uvicorn worker,
and the archiver under ``segments dev``) writes its numbers to files of its
own in ``PROMETHEUS_MULTIPROC_DIR``, and ``/metrics`` sums them all, so a
scrape sees the same totals whichever worker answers it.

The variable must be set before ``prometheus_client`` is first imported, in
the process that starts the workers, so that they inherit it: that is
:func:`prepare`, called by ``segments serve`` and ``segments dev`` before
they import anything of the API. The files of a previous run are removed
first: a new worker whose pid a dead one had would otherwise carry on from
its numbers. One folder serves one ``segments serve`` (two would empty each
other's at start).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
STALE = ("*.db", "segments-requests-*")
"""The files a run leaves: prometheus_client's, and ``service.request_metrics``'s."""


SHARED_MEMORY = Path("/dev/shm")


def memory_folder() -> str | None:
    """``/dev/shm`` when it can be used (a tmpfs: no disk), else None (the temp folder).

    The metrics files are memory-mapped and written on every request; on a
    disk file system the kernel writes the pages back every few seconds and
    the next write to a page then waits on the file system (its journal,
    busy with PostgreSQL's fsyncs on a shared disk): stalls of the event loop.
    """
    if SHARED_MEMORY.is_dir() and os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return str(SHARED_MEMORY)
    return None


def prepare(env: MutableMapping[str, str] | None = None, *, remove_at_exit: bool = True) -> Path:
    """The folder named by ``PROMETHEUS_MULTIPROC_DIR`` (created if missing),
    emptied of a previous run's files; without the variable, a new folder in
    memory (:func:`memory_folder`), removed when this process exits unless
    ``remove_at_exit`` is False. Sets the variable in ``env`` (default:
    ``os.environ``)."""
    env = os.environ if env is None else env
    given = env.get(ENV, "").strip()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for pattern in STALE:
            for stale in path.glob(pattern):
                stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="segments-metrics-", dir=memory_folder()))
        if remove_at_exit:
            atexit.register(shutil.rmtree, path, True)
    env[ENV] = str(path)
    return path
