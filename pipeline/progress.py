"""Progress reporting for long stages: rich progress bars on a terminal, quiet otherwise -> Progress objects.

Stages get a `Progress` from their context and call `task = progress.task(description, total)` then
`task.advance(n)`; `task.close()` (or use it as a context manager).
"""
from __future__ import annotations

import sys


class _NullTask:
    def advance(self, n: int = 1) -> None:  # noqa: D401 - protocol method
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress:
    """A factory of progress tasks; `enabled=False` gives silent tasks (tests, CI logs, pipes)."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def task(self, description: str, total: int | None):
        if not self.enabled:
            return _NullTask()
        return _RichTask(description, total)


class _RichTask(_NullTask):
    def __init__(self, description: str, total: int | None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self._progress = RichProgress(
            TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._id = self._progress.add_task(description, total=total)

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)

    def close(self) -> None:
        self._progress.stop()
