"""Progress reporting for long stages: rich progress bars on a terminal, quiet otherwise -> Progress objects.

Stages get a `Progress` from their context and call `task = progress.task(description, total)` then
`task.advance(n)`; `task.close()` (or use it as a context manager). Several tasks may be open at once (stages
running in parallel, their bars forwarded from worker processes): they share one live display.
"""
from __future__ import annotations

import sys
import threading


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
        self._lock = threading.Lock()
        self._live = None
        self._open = 0

    def __getstate__(self):
        return {"enabled": False}  # a copy in another process has no terminal of ours

    def __setstate__(self, state):
        self.__init__(state["enabled"])

    def task(self, description: str, total: int | None):
        if not self.enabled:
            return _NullTask()
        with self._lock:
            if self._live is None:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                           TimeElapsedColumn)

                self._live = RichProgress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=Console(stderr=True), transient=True)
                self._live.start()
            self._open += 1
            return _RichTask(self, self._live.add_task(description, total=total))

    def _closed(self, task_id) -> None:
        with self._lock:
            self._live.remove_task(task_id)
            self._open -= 1
            if self._open == 0:
                self._live.stop()
                self._live = None


class _RichTask(_NullTask):
    def __init__(self, owner: Progress, task_id):
        self._owner, self._id, self._done = owner, task_id, False

    def advance(self, n: int = 1) -> None:
        if not self._done:
            self._owner._live.advance(self._id, n)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._owner._closed(self._id)


class ForwardProgress:
    """Progress sink of a worker or child process: task events go to the parent through `send`, whose side applies
    them to its own Progress with `apply_event`."""

    enabled = True

    def __init__(self, send):
        self._send = send
        self._next = 0

    def task(self, description: str, total: int | None):
        self._next += 1
        return _ForwardTask(self._send, self._next, description, total)


class _ForwardTask(_NullTask):
    def __init__(self, send, tid: int, description: str, total: int | None):
        self._send, self._tid = send, tid
        send(("progress", "start", tid, description, total))

    def advance(self, n: int = 1) -> None:
        self._send(("progress", "advance", self._tid, n))

    def close(self) -> None:
        self._send(("progress", "close", self._tid))


def apply_event(progress, tasks: dict, event: tuple) -> None:
    """What it does: one forwarded task event (start/advance/close) -> applied to `progress`; `tasks` maps the
    sender's task ids to the tasks opened here (close what is left when the sender is gone)."""
    op, tid = event[0], event[1]
    if op == "start":
        tasks[tid] = progress.task(event[2], event[3])
    elif op == "advance" and tid in tasks:
        tasks[tid].advance(event[2])
    elif op == "close" and tid in tasks:
        tasks.pop(tid).close()
