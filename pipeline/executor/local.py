"""Local process pool: stage units -> artifacts, run in N worker processes (spawned, one per core by default).

Each worker is a long-lived Python process that imports the toolchains once and runs units one at a time; its
progress bars and log records are forwarded to this process. A worker that dies (a native crash, an OOM kill) fails only the
unit it was running, with the signal named, and is replaced. Exclusive units (latency measurements) start only
when no other unit runs or waits, and nothing else starts while they run, so timings are taken on a quiet CPU.
"""
from __future__ import annotations

import heapq
import multiprocessing
import pickle
import signal
import threading
from collections import deque
from concurrent.futures import Future

from .. import logs
from ..errors import StageError, exit_status, portable
from ..progress import ForwardProgress, apply_event
from .unit import StageUnit, execute_unit


class WorkerCrash(StageError):
    """A worker process died while running a unit."""


def _worker_main(conn, levels: tuple[int, int]) -> None:
    """Worker process: receive units until None (or the parent goes away), answer ("ok", artifact) or
    ("err", exception); log records (at the parent's levels: toolchains, edgepipe) and progress events go to the
    parent meanwhile, all sent from this one thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    logs.forward(conn.send, levels[0], edgepipe=levels[1])
    while True:
        try:
            unit = conn.recv()
        except (EOFError, OSError):
            return
        if unit is None:
            return
        try:
            art = execute_unit(unit, ForwardProgress(conn.send))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
            conn.send(("err", portable(err, "worker")))
        else:
            conn.send(("ok", art))


class _Worker:
    def __init__(self, mp):
        self.conn, child = mp.Pipe()
        levels = (logs.toolchain_level(), logs.edgepipe_level())
        self.proc = mp.Process(target=_worker_main, args=(child, levels), name="edgepipe-worker")
        self.proc.start()
        child.close()

    def run(self, unit: StageUnit, progress):
        try:
            self.conn.send(unit)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise StageError(f"stage {unit.name} cannot be sent to a worker process: {err}") from err
        tasks = {}
        try:
            while True:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    self.proc.join(10)
                    raise WorkerCrash(f"stage {unit.name} ({unit.label}) crashed its worker process "
                                      f"({exit_status(self.proc.exitcode)})") from None
                if msg[0] == "progress":
                    apply_event(progress, tasks, msg[1:])
                elif msg[0] == "log":
                    logs.reemit(msg[1])
                elif msg[0] == "ok":
                    return msg[1]
                else:
                    raise msg[1]
        finally:
            for task in tasks.values():
                task.close()

    def alive(self) -> bool:
        return self.proc.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout_s)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class LocalExecutor:
    """N worker processes fed from one scheduler: shared units by priority (lower first: stages that gate many
    others), then submission order; an exclusive unit when the pool is idle and no shared unit waits."""

    def __init__(self, jobs: int, progress, log=print):
        self.jobs = max(1, int(jobs))
        self.progress = progress
        self.log = log
        self._mp = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._shared: list = []  # heap of (priority, submission order, unit, future)
        self._seq = 0
        self._exclusive: deque = deque()
        self._running = 0
        self._running_exclusive = False
        self._closed = False
        self._workers: list[_Worker] = []
        self._threads = [threading.Thread(target=self._dispatch, name=f"edgepipe-dispatch-{i}", daemon=True)
                         for i in range(self.jobs)]
        for t in self._threads:
            t.start()

    def submit(self, unit: StageUnit) -> Future:
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("executor is closed")
            if unit.exclusive:
                self._exclusive.append((unit, fut))
            else:
                self._seq += 1
                heapq.heappush(self._shared, (unit.priority, self._seq, unit, fut))
            self._cond.notify_all()
        return fut

    def _next(self):
        """Block until a unit may start -> (unit, future, exclusive), or None when closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if self._shared and not self._running_exclusive:
                    _, _, unit, fut = heapq.heappop(self._shared)
                    self._running += 1
                    return unit, fut, False
                if self._exclusive and not self._shared and self._running == 0 and not self._running_exclusive:
                    unit, fut = self._exclusive.popleft()
                    self._running_exclusive = True
                    return unit, fut, True
                self._cond.wait()

    def _dispatch(self) -> None:
        worker = None
        try:
            while True:
                item = self._next()
                if item is None:
                    return
                unit, fut, exclusive = item
                try:
                    if not fut.set_running_or_notify_cancel():
                        continue
                    if worker is None or not worker.alive():
                        worker = _Worker(self._mp)
                        with self._cond:
                            self._workers.append(worker)
                    try:
                        fut.set_result(worker.run(unit, self.progress))
                    except WorkerCrash as err:
                        worker = None  # replaced on the next unit
                        fut.set_exception(err)
                    except BaseException as err:  # noqa: BLE001 - the runner decides what a failure means
                        fut.set_exception(err)
                finally:
                    with self._cond:
                        if exclusive:
                            self._running_exclusive = False
                        else:
                            self._running -= 1
                        self._cond.notify_all()
        finally:
            if worker is not None:
                worker.stop()

    def close(self, kill: bool = False) -> None:
        """Stop the pool: pending units are cancelled; running ones finish first unless `kill` (Ctrl-C, a bad
        input found mid-build), which kills the workers at once."""
        if kill:
            with self._cond:
                workers = list(self._workers)
            for w in workers:
                if w.alive():
                    w.proc.kill()
        with self._cond:
            self._closed = True
            pending = [(u, f) for _, _, u, f in self._shared] + list(self._exclusive)
            self._shared.clear()
            self._exclusive.clear()
            self._cond.notify_all()
        for _, fut in pending:
            fut.cancel()
        for t in self._threads:
            t.join(timeout=30)
        with self._cond:
            workers = list(self._workers)
        for w in workers:
            if w.alive():
                w.proc.kill()
                w.proc.join()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(kill=exc_type is not None)
