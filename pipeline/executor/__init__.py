"""Executors: picklable stage work units (StageUnit) in -> artifacts committed to the content-addressed cache out.

Where a unit runs is the executor's business: `inline` runs it in this process (tests, debugging), `local` in a
pool of worker processes, one per core, so independent stages of a build use every core and a native crash of a
toolchain kills a worker, not the build. A Ray executor for device labs plugs into `make_executor` later: a unit
carries everything a remote worker needs (no open files, no arrays: datasets and calibration sets pickle as the
recipe that rebuilds them) and its output is found again by its cache key.
"""
from __future__ import annotations

from .unit import StageUnit, execute_unit


def make_executor(jobs: int, progress, log=print):
    """What it does: a job count -> an executor: 0 = inline (this process), N >= 1 = N worker processes."""
    if jobs <= 0:
        from .inline import InlineExecutor

        return InlineExecutor(progress)
    from .local import LocalExecutor

    return LocalExecutor(jobs, progress, log=log)


__all__ = ["StageUnit", "execute_unit", "make_executor"]
