"""Inline executor: stage units run in this process, one at a time (tests and debugging) -> completed futures."""
from __future__ import annotations

import threading
from concurrent.futures import Future

from .unit import StageUnit, execute_unit


class InlineExecutor:
    """Runs each unit in the calling thread, serialised: toolchains are not safe to run concurrently in one
    process."""

    jobs = 1

    def __init__(self, progress):
        self.progress = progress
        self._lock = threading.Lock()

    def submit(self, unit: StageUnit) -> Future:
        fut: Future = Future()
        with self._lock:
            try:
                fut.set_result(execute_unit(unit, self.progress))
            except BaseException as err:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(err)
        return fut

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
