"""The build runner: a checked Plan -> cached stage runs per target -> results for bundles and the report.

Bad input (config, data, calibration, factory) is found before any stage runs and raised (exit code 2);
a stage or gate failure fails only its target.
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .artifact import Artifact
from .cache import Cache, cache_key
from .calibration import CalibrationSet
from .errors import ConfigError, EdgepipeError, ModelFactoryError, StageError, TransportError
from .plan import EXPORT_CHAINS, Plan, TargetPlan
from .progress import Progress
from .stages import StageContext, get_stage

# Stages that measure time: they run while nothing else runs (pipeline/executor/local.py).
EXCLUSIVE_STAGES = frozenset({"profile"})
# Which waiting stage gets a free worker first (lower first): those that gate many others, then the long int8
# preparation on the critical path; anything not listed comes after these.
PRIORITY = {"load": 0, "reference": 0, "compress": 0, "component_reference": 0, "export_onnx": 1,
            "round_weights": 1, "export_savedmodel": 2, "quantize_onnx": 2, "quantize_openvino": 2,
            "quantize_tflite": 2, "sensitivity": 2}


@dataclass
class StageRecord:
    stage: str
    target: str
    cached: bool
    seconds: float
    sha256: str
    start: float | None = None  # epoch seconds, for stages that ran (the build timeline)
    worker: int | None = None  # the process that ran it


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
    # export: components -> per component name: {"model", "lineage", "profile"} (run order)
    components: dict[str, dict] = field(default_factory=dict)
    sensitivity: dict | None = None  # quantization.sensitivity: ranking, gate failure, layers kept float (fallback.py)
    device: object | None = None  # DeviceFacts of the target's device, read before any of its stages
    device_settings: list[dict] = field(default_factory=list)  # settings resolved from the device, with reasons

    def models(self) -> dict[str, Artifact]:
        """What it does: a result -> its final model artifact(s) by component ("model" for a fused graph)."""
        if self.components:
            return {name: c["model"] for name, c in self.components.items() if c.get("model") is not None}
        return {"model": self.model} if self.model is not None else {}

    def latency(self) -> dict | None:
        """What it does: profile artifact(s) -> the target's latency; for components each part and their sum
        (a device running the whole chain once per decision pays the sum)."""
        if not self.components:
            return self.profile.meta if self.profile is not None else None
        parts = {name: c["profile"].meta for name, c in self.components.items() if c.get("profile") is not None}
        if not parts or len(parts) != len(self.components):
            return None
        first = next(iter(parts.values()))
        keep = {k: first[k] for k in ("threads", "runtime", "runtime_version", "cpu_model", "transport", "emulated",
                                      "emulator") if k in first}
        out = {**keep, "components": parts}
        # emulated devices measure no latency_ms: their wall time and instruction counts add up the same way
        for key in ("latency_ms", "emulated_wall_ms"):
            if all(isinstance(p.get(key), dict) for p in parts.values()):
                out[key] = {k: sum(p[key][k] for p in parts.values()) for k in first[key]
                            if all(isinstance(p[key].get(k), (int, float)) for p in parts.values())}
        if all(isinstance(p.get("instructions"), dict) for p in parts.values()):
            out["instructions"] = {"per_inference": sum(p["instructions"]["per_inference"] for p in parts.values())}
        return out


@dataclass
class BuildState:
    plan: Plan
    iospec: object
    dataset: object
    reference: Artifact | None = None
    torch_model: Artifact | None = None
    component_reference: Artifact | None = None
    torch_lineage: list = field(default_factory=list)  # load (+ compress): where every target's lineage starts
    components: dict | None = None  # component name -> Component (torch views), when a target exports components
    component_wiring: dict | None = None  # {"order": [...], "feeds_from": {...}, "iospecs": {...}} for bundles
    targets: list[TargetResult] = field(default_factory=list)
    records: list[StageRecord] = field(default_factory=list)
    # compression_study: recipe name -> {"recipe", "compression" (summary or None), "results": {target: TargetResult}}
    study: dict = field(default_factory=dict)
    host: object | None = None  # DeviceFacts of the build host (pipeline/devices.py)


@contextlib.contextmanager
def _target_failures(result: "TargetResult"):
    """A stage, gate or transport failure fails this target only (recorded); bad input (exit 2) still stops."""
    try:
        yield
    except (StageError, ConfigError) as err:
        result.status = "failed"
        result.reasons.append(str(err))
    except EdgepipeError as err:
        if err.exit_code == 2:
            raise
        result.status = "failed"
        result.reasons.append(str(err))


def _factory_call(factory, method: str, *args):
    """What it does: a factory method call -> its result; any non-edgepipe failure of user code becomes one
    ModelFactoryError line naming the method (exit 2)."""
    try:
        return getattr(factory, method)(*args)
    except EdgepipeError:
        raise
    except Exception as err:
        raise ModelFactoryError(f"model.factory {method}() failed: {type(err).__name__}: {err}") from err


def component_profile(profile, comp, name: str):
    """What it does: a target profile + a component's own quantization needs for this format -> the profile its
    stages run with (the same object when the component has none). keep_float entries are added, other keys
    replace the profile's; a bad key or value is a ModelFactoryError."""
    from pydantic import ValidationError

    hints = dict((comp.quantization or {}).get(profile.format) or {})
    if not hints or profile.precision != "int8":
        return profile
    if "float" in hints:  # this part stays float in this format's int8 targets (declared with the reason)
        return profile.model_copy(update={"precision": "fp32", "quantization": type(profile.quantization)()})
    q = profile.quantization
    merged = q.model_dump(include=q.model_fields_set)  # keep "explicitly set" meaning (NNCF refuses unused keys)
    keep = list(q.keep_float) + [k for k in hints.pop("keep_float", []) if k not in q.keep_float]
    merged.update(hints)
    if keep:
        merged["keep_float"] = keep
    try:
        quantization = type(profile.quantization).model_validate(merged)
    except ValidationError as err:
        raise ModelFactoryError(f"component '{name}' quantization for {profile.format}: "
                                f"{err.errors()[0]['msg']}") from err
    return profile.model_copy(update={"quantization": quantization})


class Runner:
    """Runs stages through the cache and an executor; `force` names stages whose cache is bypassed (e.g. profile).

    Targets run in threads of this process, each driving its own chain; the stages themselves run on the
    executor (default: inline, one at a time). A stage asked for twice at once (two targets sharing an export)
    runs once: the second caller waits for the first."""

    def __init__(self, cache: Cache, progress: Progress, log=print, force: tuple[str, ...] = (), executor=None):
        from .executor.inline import InlineExecutor

        self.cache = cache
        self.progress = progress
        self.log = log
        self.force = set(force)
        self.executor = executor if executor is not None else InlineExecutor(progress)
        self._lock = threading.Lock()
        self._components_lock = threading.Lock()
        self._inflight: dict[tuple[str, str], Future] = {}

    def prepare(self, plan: Plan) -> BuildState:
        """Bind the model's IOSpec and dataset, and check every calibration set, before any stage runs."""
        from .data import open_dataset
        from .torchmodel import import_factory

        factory = import_factory(plan.release.model.factory)
        iospec = _factory_call(factory, "iospec", plan.release.model.params)
        dataset = open_dataset(plan.dataset_dir, iospec, store=self.cache.root / "_memo" / "splits")
        for split in ("eval", "calibration"):
            dataset.split(split)  # preprocessing errors (shapes, fields) surface here
        state = BuildState(plan=plan, iospec=iospec, dataset=dataset)
        for steps in [plan.release.compression] + list(plan.release.compression_study.values()):
            if steps:
                self.check_recipe(factory, plan, iospec, dataset, steps)
        for tp in plan.targets:
            result = TargetResult(plan=tp)
            if tp.profile.precision == "int8":
                calib = self.calibration_for(state, tp)
                result.calibration_fingerprint = calib.fingerprint()
            state.targets.append(result)
        return state

    @staticmethod
    def check_recipe(factory, plan: Plan, iospec, dataset, steps) -> None:
        """What it does: the compression recipe dry-run on an untrained model of the same architecture (dummy
        inputs of the IOSpec's shapes) -> a ConfigError (exit 2) for a layer pattern that matches nothing, a rank a
        layer cannot have, a ratio that empties a layer or changes an output, or a distillation pool the dataset
        lacks, before any stage runs."""
        from .compress.stage import recipe_data, run_recipe
        from .data import split_path

        for step in steps:
            for split in step.pool if step.method == "distill" else ():
                if not split_path(dataset.root, split).is_file():
                    raise ConfigError(f"compression: distill pool '{split}' needs {dataset.root}/{split}.npz")
            if step.method == "distill" and step.label_weight > 0:
                labels = [dataset.split(split).labels for split in step.pool]
                if not any(lab is not None and (lab >= 0).any() for lab in labels):
                    raise ConfigError(f"compression: distill label_weight {step.label_weight} needs labels, and the "
                                      f"pool {', '.join(step.pool)} has none")
        module = _factory_call(factory, "construct", plan.release.model.params)
        try:
            run_recipe(module, steps, recipe_data(iospec))
        except ConfigError as err:
            raise ConfigError(f"compression: {err}") from err

    def calibration_for(self, state: BuildState, tp: TargetPlan) -> CalibrationSet:
        c = tp.profile.calibration
        source = f"{state.plan.dataset_dir.name}/calibration.npz (target {tp.name})"
        full = CalibrationSet.from_dataset(state.dataset, "calibration", source)
        full.check(c.min_samples)
        calib = full.subset(c.samples, c.seed)
        calib.check(c.min_samples)
        return calib

    def run_stage(self, state: BuildState, name: str, artifact: Artifact | None, target: str = "*",
                  profile=None, calibration: CalibrationSet | None = None,
                  deps: dict[str, Artifact] | None = None, component: str = "model", release=None,
                  device=None) -> Artifact:
        stage = get_stage(name)
        if profile is not None and profile.precision == "int8":  # device-dependent settings, resolved once more
            profile, device = self._for_device(state, profile, device)  # (idempotent) for stages run on their own
        iospec = state.iospec if component == "model" else state.components[component].iospec
        ctx = StageContext(release=release or state.plan.release, base_dir=state.plan.base_dir, iospec=iospec,
                           dataset=state.dataset, progress=self.progress, target=profile, calibration=calibration,
                           deps=dict(deps or {}), stage=stage, component=component,
                           example=None if component == "model" else self.component_example(state, component),
                           side_iospecs={n: (c.dataset, c.iospec) for n, c in (getattr(state, "components", None) or {}).items()
                                         if c.side},
                           device=device, host=getattr(state, "host", None) if device is not None else None)
        inputs = ([artifact.sha256] if artifact else []) + [a.sha256 for _, a in sorted(ctx.deps.items())]
        key = cache_key(name, stage.version, stage.config(ctx), inputs,
                        calibration.fingerprint() if calibration is not None else None, stage.tool_versions())
        ctx.parents = tuple(inputs)
        with self._lock:
            running = self._inflight.get((name, key))
            if running is None:
                mine: Future = Future()
                self._inflight[(name, key)] = mine
        if running is not None:  # another target asked for the same stage output first: share it
            start = time.perf_counter()
            art = running.result()
            self.log(f"  {name:<14} {target:<22} shared  {key[:12]}")
            state.records.append(StageRecord(name, target, True, time.perf_counter() - start, art.sha256))
            return art
        try:
            art = self._run_or_lookup(state, name, key, artifact, ctx, target)
        except BaseException as err:
            mine.set_exception(err)
            raise
        else:
            mine.set_result(art)
        finally:
            with self._lock:
                self._inflight.pop((name, key), None)
        return art

    def _run_or_lookup(self, state: BuildState, name: str, key: str, artifact, ctx: StageContext,
                       target: str) -> Artifact:
        from .executor import StageUnit

        start = time.perf_counter()
        hit = None if name in self.force else self.cache.lookup(name, key)
        if hit is not None:
            self.log(f"  {name:<14} {target:<22} cached  {key[:12]}")
            state.records.append(StageRecord(name, target, True, time.perf_counter() - start, hit.sha256))
            return hit
        with self.cache.claim(name, key):  # another build on this cache computing the same output: wait for it
            hit = None if name in self.force else self.cache.lookup(name, key)
            if hit is not None:
                self.log(f"  {name:<14} {target:<22} cached  {key[:12]}  (built by another process)")
                state.records.append(StageRecord(name, target, True, time.perf_counter() - start, hit.sha256))
                return hit
            unit = StageUnit.make(name, key, artifact, ctx, self.cache.root, replace=name in self.force,
                                  exclusive=name in EXCLUSIVE_STAGES, label=target, priority=PRIORITY.get(name, 5))
            art, ran = self.executor.submit(unit).result()
        seconds = ran["seconds"]
        self.log(f"  {name:<14} {target:<22} done    {key[:12]}  {seconds:.1f}s")
        state.records.append(StageRecord(name, target, False, seconds, art.sha256, ran["start"], ran["pid"]))
        return art

    def run(self, plan: Plan) -> BuildState:
        self.cache.clean_temp()
        state = self.prepare(plan)
        state.torch_model = self.run_stage(state, "load", None)
        state.reference = self.run_stage(state, "reference", state.torch_model)
        state.torch_lineage = [state.torch_model]
        if state.plan.release.compression:  # every export starts from the compressed model; the reference stays
            state.torch_model = self.run_stage(state, "compress", state.torch_model)
            state.torch_lineage.append(state.torch_model)
        self.each_target(state, state.targets)
        if state.plan.release.compression_study:
            self.run_study(state)
        return state

    def each_target(self, state: BuildState, results: list["TargetResult"], run=None) -> None:
        """What it does: target results -> each built by `run` (default: its fused or components chain), all at
        once in threads when the executor has more than one worker; the first bad-input error (exit 2) raised."""
        def one(result):
            if run is not None:
                return run(result)
            if result.plan.export == "components":
                with self._components_lock:  # the first components target prepares them; fused ones never wait
                    if state.components is None:
                        try:
                            self.prepare_components(state)
                        except BaseException:
                            state.components = state.component_wiring = state.component_reference = None
                            raise
                return self.run_components_target(state, result)
            return self.run_target(state, result)

        if getattr(self.executor, "jobs", 1) <= 1 or len(results) <= 1:
            for result in results:
                one(result)
            return
        with ThreadPoolExecutor(max_workers=len(results), thread_name_prefix="edgepipe-target") as pool:
            futures = [pool.submit(one, r) for r in results]
        for fut in futures:
            fut.result()

    def run_study(self, state: BuildState) -> None:
        """What it does: the release's compression_study -> per recipe (and the uncompressed baseline) the
        compressed model and, for every fused target, its export, verification and profile (cached stages, no
        bundles, no sensitivity fallback): state.study, the report's compression table."""
        release = state.plan.release
        load = state.torch_lineage[0]
        keep = state.torch_model, state.torch_lineage
        recipes = {"baseline": []} | dict(release.compression_study)
        try:
            for vname, steps in recipes.items():
                art = load
                if steps:
                    art = self.run_stage(state, "compress", load, f"study {vname}",
                                         release=release.model_copy(update={"compression": steps}))
                state.torch_model, state.torch_lineage = art, [load] + ([art] if steps else [])
                entry = {"recipe": [s.label() for s in steps], "compression": art.meta.get("compression"),
                         "results": {}}
                for tp in state.plan.targets:
                    if tp.export == "components":
                        continue
                    result = TargetResult(plan=tp)
                    self.run_target(state, result, label=f"{tp.name}@{vname}", fallback=False)
                    entry["results"][tp.name] = result
                state.study[vname] = entry
        finally:
            state.torch_model, state.torch_lineage = keep

    def prepare_components(self, state: BuildState) -> None:
        """What it does: trained torch artifact -> state.components (checked torch views), their wiring, and the
        cached fp32 torch outputs of every component on eval and calibration (fusion-head calibration inputs are
        the fp32 torch encoders' embeddings of the calibration samples)."""
        from .torchmodel import import_factory, load_torch
        from .models.components import chain_of, check_components

        spec = state.plan.release.model
        factory = import_factory(spec.factory)
        if not callable(getattr(factory, "components", None)):
            raise ModelFactoryError(f"model.export: {spec.export} needs a components() method on '{spec.factory}'")
        try:
            parts = factory.components(spec.params, load_torch(state.torch_model, factory, spec.params))
        except EdgepipeError:
            raise
        except Exception as err:
            raise ModelFactoryError(f"model.factory components() failed: {type(err).__name__}: {err}") from err
        check_components(parts, state.iospec)
        order, feeds = chain_of(parts)
        state.components = parts
        state.component_wiring = {"order": order, "feeds_from": feeds,
                                  "iospecs": {n: c.iospec.model_dump(mode="json") for n, c in parts.items()}}
        state.component_reference = self.run_stage(state, "component_reference", state.torch_model)

    @staticmethod
    def component_example(state: BuildState, name: str) -> dict:
        """What it does: a component -> its inputs on eval sample 0 as the fp32 torch chain computes them."""
        import numpy as np

        ref = state.component_reference
        memo = state.__dict__.setdefault("_examples", {})
        if (ref.sha256, name) not in memo:
            memo[(ref.sha256, name)] = {s.name: np.ascontiguousarray(np.load(ref.path(f"eval.{name}.in.{s.name}.npy"),
                                                                              mmap_mode="r")[0:1])
                                        for s in state.components[name].iospec.inputs}
        return memo[(ref.sha256, name)]

    def component_calibration(self, state: BuildState, tp: TargetPlan, name: str) -> CalibrationSet:
        """What it does: a component + target -> the component's calibration subset (same sample draw as the
        fused model's, inputs computed by the fp32 torch components)."""
        c = tp.profile.calibration
        comp = state.components[name]
        ref = state.component_reference
        files = {s.name: str(ref.path(f"calibration.{name}.{s.name}.npy")) for s in comp.iospec.inputs}
        data = f"{comp.dataset}/calibration.npz" if comp.side else "calibration.npz via torch components"
        source = f"{state.plan.dataset_dir.name}/{data} ({name}, target {tp.name})"
        calib = CalibrationSet.from_files(files, comp.iospec, source).subset(c.samples, c.seed)
        calib.check(c.min_samples)
        return calib

    def run_components_target(self, state: BuildState, result: TargetResult) -> None:
        """What it does: one target in components mode -> per-component chains, an end-to-end verification and
        per-component profiles; a failure fails only this target."""
        with _target_failures(result):
            self.read_device(state, result)
            tp = result.plan  # with the settings its device resolved
            for cname, comp in state.components.items():
                art = state.torch_model
                lineage = list(getattr(state, "torch_lineage", None) or [art])
                profile = component_profile(tp.profile, comp, cname)
                chain = tp.chain if profile.precision == tp.profile.precision else \
                    EXPORT_CHAINS[(profile.format, profile.precision)]
                for name in chain:
                    calib = self.component_calibration(state, tp, cname) if get_stage(name).needs_calibration else None
                    art = self.run_stage(state, name, art, f"{tp.name}/{cname}", profile, calib, component=cname,
                                         device=result.device)
                    lineage.append(art)
                self._check_ops(art, tp)
                result.components[cname] = {"model": art, "lineage": lineage}
                if profile.precision != tp.profile.precision:
                    result.components[cname]["quantization"] = {
                        "float": comp.quantization[profile.format]["float"]}
                elif profile is not tp.profile:
                    result.components[cname]["quantization"] = profile.quantization.model_dump(mode="json")
            if tp.profile.precision == "int8":
                from .export import check_keep_float_applied

                check_keep_float_applied(state.plan.release, tp.profile, result.components)
            deps = {"reference": state.reference, "component_reference": state.component_reference}
            deps.update({f"component.{n}": c["model"] for n, c in result.components.items()})
            result.verification = self.run_stage(state, "verify_components", None, tp.name, tp.profile, deps=deps,
                                                 device=result.device)
            from .verify import gate_failures

            result.reasons = gate_failures(result.verification.meta, tp.profile.gates)
            if state.plan.release.profile:
                for cname, c in result.components.items():
                    c["profile"] = self.run_stage(state, "profile", c["model"], f"{tp.name}/{cname}", tp.profile,
                                                  device=result.device,
                                                  deps={"verification": result.verification}, component=cname)
            result.status = "failed" if result.reasons else "passed"

    def read_device(self, state: BuildState, result: TargetResult) -> None:
        """What it does: a target -> result.device: its device's facts, read through its transport (or declared)
        before any of its stages runs; an unreachable device fails this target only."""
        from .devices import device_facts, host_facts

        if state.host is None:
            state.host = host_facts()
        if result.device is None:
            try:
                result.device = device_facts(result.plan.profile, state.plan.base_dir)
            except TransportError as err:
                raise StageError(f"device of target '{result.plan.name}' not reachable: {err}") from err
            self.log(f"  device         {result.plan.name:<22} {result.device.transport}: {result.device.arch} "
                     f"{result.device.cpu_model}, {result.device.cores} cores, int8 {result.device.int8_class}"
                     f"{' (emulated)' if result.device.emulated else ''}")
            self.resolve_device_settings(result)

    @staticmethod
    def _for_device(state: BuildState, profile, device):
        """What it does: an int8 profile (+ its device's facts, read through its transport when not given) -> the
        profile with its device-dependent settings resolved, and the facts."""
        from .device_settings import DeviceMismatch, resolve
        from .devices import device_facts

        if device is None:
            try:
                device = device_facts(profile, state.plan.base_dir)
            except TransportError as err:
                raise StageError(f"device of target '{profile.name}' not reachable: {err}") from err
        try:
            return resolve(profile, device).profile, device
        except DeviceMismatch as err:
            raise StageError(f"target '{profile.name}': {err}") from err

    def resolve_device_settings(self, result: TargetResult) -> None:
        """What it does: a target whose device is known -> result.plan with its profile's device-dependent settings
        resolved (device_settings.py) and result.device_settings saying which and why; a setting the device cannot
        honour fails this target with one line."""
        from .device_settings import DeviceMismatch, resolve

        try:
            settings = resolve(result.plan.profile, result.device)
        except DeviceMismatch as err:
            raise StageError(f"target '{result.plan.name}': {err}") from err
        result.plan = dataclasses.replace(result.plan, profile=settings.profile)
        result.device_settings = settings.to_json()
        for r in settings.resolved:
            if r.chosen_by == "device":
                self.log(f"  device         {result.plan.name:<22} {r.setting} = {r.value}: {r.reason}")

    @staticmethod
    def _check_ops(art: Artifact, tp: TargetPlan) -> None:
        """What it does: a final artifact -> StageError if it uses ops the target denies or does not allow."""
        from .verify import op_violations

        bad_ops = op_violations(art.meta.get("ops", {}), tp.profile.ops.allowed, tp.profile.ops.denied)
        if bad_ops:
            raise StageError(f"{tp.profile.format} model uses ops the target does not allow: {', '.join(bad_ops)}")

    def run_target(self, state: BuildState, result: TargetResult, label: str | None = None,
                   fallback: bool = True) -> None:
        """What it does: a fused target -> its chain, verification, sensitivity fallback (unless `fallback` is off,
        as in the compression study) and profile; `label` names it in the log (default: the target name)."""
        with _target_failures(result):
            self.read_device(state, result)
            tp = result.plan  # with the settings its device resolved
            self.run_chain(state, result, tp.profile, label=label)
            if fallback and tp.profile.quantization.sensitivity.enabled:
                self._sensitivity_fallback(state, result)
            if state.plan.release.profile:
                result.profile = self.run_stage(state, "profile", result.model, label or tp.name, tp.profile,
                                                device=result.device,
                                                deps={"verification": result.verification})
            result.status = "failed" if result.reasons else "passed"

    def _sensitivity_fallback(self, state: BuildState, result: TargetResult) -> None:
        """What it does: a fused int8 target whose profile enables the sensitivity pass -> fallback.py's search,
        given this runner's ranking stage and chain builds."""
        from .fallback import sensitivity_fallback

        tp = result.plan

        def rank(fp32: Artifact) -> Artifact:
            return self.run_stage(state, "sensitivity", fp32, tp.name, tp.profile, self.calibration_for(state, tp))

        def build(profile, label: str) -> TargetResult:
            attempt = TargetResult(plan=tp)
            self.run_chain(state, attempt, profile, label=label)
            return attempt

        sensitivity_fallback(result, rank, build, self.log)

    def run_chain(self, state: BuildState, result: TargetResult, profile, label: str | None = None) -> None:
        """What it does: a fused target + the profile to build with -> result.lineage, model, verification and gate
        reasons (the sensitivity fallback calls it again with extra keep_float entries in `profile`)."""
        tp = result.plan
        art = state.torch_model
        result.lineage = list(getattr(state, "torch_lineage", None) or [art])
        for name in tp.chain:
            calib = self.calibration_for(state, tp) if get_stage(name).needs_calibration else None
            art = self.run_stage(state, name, art, label or tp.name, profile, calib, device=result.device)
            result.lineage.append(art)
        result.model = art
        self._check_ops(art, tp)
        result.verification = self.run_stage(state, "verify", art, label or tp.name, profile, device=result.device,
                                             deps={"reference": state.reference})
        from .verify import gate_failures

        result.reasons = gate_failures(result.verification.meta, profile.gates)
