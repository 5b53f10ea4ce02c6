"""A stage work unit: (stage name, input artifact, context, cache key) -> the committed output artifact.

`execute_unit` is what every executor runs, wherever it runs: it instantiates the stage, gives it a fresh work
dir in the cache, runs it and commits the result under the key the runner computed. The context travels without
its progress sink and stage object (the executor gives it a progress sink that reaches the user's terminal).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..cache import Cache
from ..stages import StageContext, get_stage


@dataclass
class StageUnit:
    """One stage run. `exclusive` units (latency measurements) run while nothing else runs."""

    name: str
    key: str
    artifact: Artifact | None
    ctx: StageContext
    cache_root: str
    replace: bool = False
    exclusive: bool = False
    label: str = ""
    ref: str = ""  # "module:Class" of the stage (default: the registry's entry for `name`)
    priority: int = 5  # lower runs first when units wait for a worker

    @classmethod
    def make(cls, name: str, key: str, artifact: Artifact | None, ctx: StageContext, cache_root: Path, **kw):
        """What it does: a runner's stage call -> a unit whose context carries no progress sink or stage object."""
        return cls(name, key, artifact, dataclasses.replace(ctx, progress=None, stage=None, workdir=None),
                   str(cache_root), **kw)


def execute_unit(unit: StageUnit, progress) -> tuple[Artifact, dict]:
    """What it does: a unit + a progress sink -> (the stage's artifact committed to the cache under unit.key, where
    and when it ran: {"seconds", "start", "end" (epoch seconds), "pid"})."""
    stage = get_stage(unit.name, unit.ref or None)
    cache = Cache(Path(unit.cache_root))
    ctx = dataclasses.replace(unit.ctx, progress=progress, stage=stage, cache_root=cache.root)
    ctx.workdir = cache.new_workdir(unit.name)
    wall = time.time()
    start = time.perf_counter()
    try:
        art = stage.run(unit.artifact, ctx)
    except BaseException:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
        raise
    art = cache.commit(unit.name, unit.key, ctx.workdir, art, replace=unit.replace)
    seconds = time.perf_counter() - start
    return art, {"seconds": seconds, "start": wall, "end": wall + seconds, "pid": os.getpid()}
