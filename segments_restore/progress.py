"""Progress of a long command: a bar on a terminal, plain lines otherwise.

The bar is ``rich``'s: Litestar already depends on it, so it costs the
installation nothing, it is well kept, and it draws on stderr without
disturbing what the command prints on stdout. Off a terminal (a log file, a
CI job, a pipe) a bar's redraws are noise, so a plain line is printed per
step and every :data:`PLAIN_EVERY_S` seconds within one.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import IO, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_EVERY_S = 5.0


class Reporter:
    """``step(name, total)`` starts a step; ``advance(n)`` moves it on."""

    def __init__(self, stream: IO[str] | None = None, *, bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        use_bar = self.stream.isatty() if bar is None else bar
        self._console = Console(file=self.stream) if use_bar else None
        self._progress: Progress | None = None
        self._task: object = None
        self._name = ""
        self._total = 0
        self._done = 0
        self._started = self._last = time.monotonic()

    def __enter__(self) -> Self:
        if self._console is not None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            if kind is None:
                self._finish_step()
            self._progress.stop()

    def _finish_step(self) -> None:
        """The bar of the step before shows it done (a step without a total pulses till then)."""
        if self._progress is not None and self._task is not None:
            done = self._progress.tasks[-1].completed
            self._progress.update(self._task, total=max(done, 1), completed=max(done, 1))  # type: ignore[arg-type]

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, highlight=False, markup=False)
        else:
            print(message, file=self.stream, flush=True)

    def step(self, name: str, total: int | None = None) -> None:
        self._finish_step()
        self._name, self._total, self._done = name, total or 0, 0
        self._started = self._last = time.monotonic()
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total)
        else:
            suffix = f" ({total:,})" if total else ""
            print(f"{name}{suffix} ...", file=self.stream, flush=True)

    def advance(self, n: int) -> None:
        self._done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n)  # type: ignore[arg-type]
            return
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY_S:
            self._last = now
            share = f" {100 * self._done / self._total:.0f}%" if self._total else ""
            print(
                f"{self._name}:{share} {self._done:,} in {now - self._started:.0f} s",
                file=self.stream,
                flush=True,
            )
