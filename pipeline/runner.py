"""The build runner: a checked Plan -> cached stage runs per target -> results for bundles and the report.

Bad input (config, data, calibration, factory) is found before any stage runs and raised (exit code 2);
a stage or gate failure fails only its target.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import Artifact
from .cache import Cache, cache_key
from .calibration import CalibrationSet
from .errors import ConfigError, EdgepipeError, ModelFactoryError, StageError
from .plan import Plan, TargetPlan
from .progress import Progress
from .stages import StageContext, get_stage


@dataclass
class StageRecord:
    stage: str
    target: str
    cached: bool
    seconds: float
    sha256: str


@dataclass
class TargetResult:
    plan: TargetPlan
    status: str = "pending"  # passed | failed
    reasons: list[str] = field(default_factory=list)
    model: Artifact | None = None
    lineage: list[Artifact] = field(default_factory=list)
    verification: Artifact | None = None
    profile: Artifact | None = None
    calibration_fingerprint: str | None = None


@dataclass
class BuildState:
    plan: Plan
    iospec: object
    dataset: object
    reference: Artifact | None = None
    torch_model: Artifact | None = None
    targets: list[TargetResult] = field(default_factory=list)
    records: list[StageRecord] = field(default_factory=list)


def _crash_point(stage: str) -> None:
    """Test hook: EDGEPIPE_CRASH_AT=<stage> SIGKILLs this process after the stage wrote its files, before commit."""
    if os.environ.get("EDGEPIPE_CRASH_AT") == stage:
        os.kill(os.getpid(), signal.SIGKILL)


class Runner:
    """Runs stages through the cache; `force` names stages whose cache is bypassed (e.g. profile)."""

    def __init__(self, cache: Cache, progress: Progress, log=print, force: tuple[str, ...] = ()):
        self.cache = cache
        self.progress = progress
        self.log = log
        self.force = set(force)

    def prepare(self, plan: Plan) -> BuildState:
        """Bind the model's IOSpec and dataset, and check every calibration set, before any stage runs."""
        from .data import open_dataset
        from .load import import_factory

        factory = import_factory(plan.release.model.factory)
        try:
            iospec = factory.iospec(plan.release.model.params)
        except EdgepipeError:
            raise
        except Exception as err:
            raise ModelFactoryError(f"model.factory iospec() failed: {type(err).__name__}: {err}") from err
        dataset = open_dataset(plan.dataset_dir, iospec)
        for split in ("eval", "calibration"):
            dataset.split(split)  # preprocessing errors (shapes, fields) surface here
        state = BuildState(plan=plan, iospec=iospec, dataset=dataset)
        for tp in plan.targets:
            result = TargetResult(plan=tp)
            if tp.profile.precision == "int8":
                calib = self.calibration_for(state, tp)
                result.calibration_fingerprint = calib.fingerprint()
            state.targets.append(result)
        return state

    def calibration_for(self, state: BuildState, tp: TargetPlan) -> CalibrationSet:
        c = tp.profile.calibration
        split = state.dataset.split("calibration")
        source = f"{state.plan.dataset_dir.name}/calibration.npz (target {tp.name})"
        full = CalibrationSet(split.inputs, state.iospec, source)
        full.check(c.min_samples)
        calib = full.subset(c.samples, c.seed)
        calib.check(c.min_samples)
        return calib

    def run_stage(self, state: BuildState, name: str, artifact: Artifact | None, target: str = "*",
                  profile=None, calibration: CalibrationSet | None = None,
                  deps: dict[str, Artifact] | None = None) -> Artifact:
        stage = get_stage(name)
        ctx = StageContext(release=state.plan.release, base_dir=state.plan.base_dir, iospec=state.iospec,
                           dataset=state.dataset, progress=self.progress, target=profile, calibration=calibration,
                           deps=dict(deps or {}), stage=stage)
        inputs = ([artifact.sha256] if artifact else []) + [a.sha256 for _, a in sorted(ctx.deps.items())]
        key = cache_key(name, stage.version, stage.config(ctx), inputs,
                        calibration.fingerprint() if calibration is not None else None, stage.tool_versions())
        start = time.perf_counter()
        hit = None if name in self.force else self.cache.lookup(name, key)
        if hit is not None:
            self.log(f"  {name:<14} {target:<22} cached  {key[:12]}")
            state.records.append(StageRecord(name, target, True, time.perf_counter() - start, hit.sha256))
            return hit
        ctx.workdir = self.cache.new_workdir(name)
        ctx.parents = tuple(inputs)
        try:
            art = stage.run(artifact, ctx)
            _crash_point(name)
        except BaseException:
            shutil.rmtree(ctx.workdir, ignore_errors=True)
            raise
        art = self.cache.commit(name, key, ctx.workdir, art)
        seconds = time.perf_counter() - start
        self.log(f"  {name:<14} {target:<22} done    {key[:12]}  {seconds:.1f}s")
        state.records.append(StageRecord(name, target, False, seconds, art.sha256))
        return art

    def run(self, plan: Plan) -> BuildState:
        self.cache.clean_temp()
        state = self.prepare(plan)
        state.torch_model = self.run_stage(state, "load", None)
        state.reference = self.run_stage(state, "reference", state.torch_model)
        for result in state.targets:
            self.run_target(state, result)
        return state

    def run_target(self, state: BuildState, result: TargetResult) -> None:
        tp = result.plan
        art = state.torch_model
        result.lineage = [art]
        try:
            for name in tp.chain:
                calib = self.calibration_for(state, tp) if get_stage(name).needs_calibration else None
                art = self.run_stage(state, name, art, tp.name, tp.profile, calib)
                result.lineage.append(art)
            result.model = art
            from .verify import op_violations

            bad_ops = op_violations(art.meta.get("ops", {}), tp.profile.ops.allowed, tp.profile.ops.denied)
            if bad_ops:
                raise StageError(f"{tp.profile.format} model uses ops the target does not allow: {', '.join(bad_ops)}")
            result.verification = self.run_stage(state, "verify", art, tp.name, tp.profile,
                                                 deps={"reference": state.reference})
            from .verify import gate_failures

            result.reasons = gate_failures(result.verification.meta, tp.profile.gates)
            if state.plan.release.profile:
                result.profile = self.run_stage(state, "profile", art, tp.name, tp.profile,
                                                deps={"verification": result.verification})
            result.status = "failed" if result.reasons else "passed"
        except (StageError, ConfigError) as err:
            result.status = "failed"
            result.reasons.append(str(err))
        except EdgepipeError as err:
            if err.exit_code == 2:
                raise
            result.status = "failed"
            result.reasons.append(str(err))
