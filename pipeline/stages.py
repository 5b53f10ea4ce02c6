"""Stage base class, the explicit stage registry and the per-stage context: registry name -> Stage instance.

Stages are small classes imported on demand from "module:Class" strings, so the registry costs nothing to
import. A stage writes only under `ctx.workdir` and returns `ctx.artifact(...)`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .artifact import Artifact, collect_files
from .errors import MissingDependencyError
from .formats import FORMAT_STAGES

if TYPE_CHECKING:
    from .calibration import CalibrationSet
    from .config import ReleaseConfig, TargetProfile
    from .data import Dataset
    from .iospec import IOSpec
    from .progress import Progress

# Format-independent stages here; each format's exporters and quantizers come from its record in formats.py.
STAGES: dict[str, str] = {
    "load": "pipeline.load:LoadModel",
    "reference": "pipeline.load:ReferenceOutputs",
    "compress": "pipeline.compress.stage:Compress",
    "round_weights": "pipeline.export.rounding:RoundWeights",
    **FORMAT_STAGES,
    "component_reference": "pipeline.load:ComponentReference",
    "sensitivity": "pipeline.sensitivity:Sensitivity",
    "verify": "pipeline.verify:Verify",
    "verify_components": "pipeline.verify:VerifyComponents",
    "profile": "pipeline.profile:Profile",
}


class Stage:
    """One step: consumes artifacts of `consumes` kinds, produces one of kind `produces`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    consumes: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    def config(self, ctx: "StageContext") -> dict:
        """The settings that change this stage's output (part of the cache key)."""
        return {}

    def tool_versions(self) -> dict[str, str]:
        return tool_versions(self.requires)

    def run(self, artifact: Artifact | None, ctx: "StageContext") -> Artifact:
        raise NotImplementedError


@dataclass
class StageContext:
    """Everything a stage may use. `workdir` is the only place it may write."""

    release: "ReleaseConfig"
    base_dir: Path
    iospec: "IOSpec"
    dataset: "Dataset"
    progress: "Progress"
    target: "TargetProfile | None" = None
    calibration: "CalibrationSet | None" = None
    deps: dict[str, Artifact] = field(default_factory=dict)
    workdir: Path | None = None
    stage: "Stage | None" = None
    parents: tuple[str, ...] = ()
    component: str = "model"  # which part of the model a stage works on ("model" = the fused graph)
    example: dict | None = None  # a component's inputs for eval sample 0 (fp32 torch chain); None: the model's
    side_iospecs: dict | None = None  # side component name -> (data sub-directory, IOSpec)
    cache_root: Path | None = None  # the stage cache: where `memo` keeps sub-results shared between stage runs
    device: object | None = None  # targets.device.DeviceFacts of the target's device (pipeline/devices.py)
    host: object | None = None  # DeviceFacts of the build host, where host-side verification runs

    def example_inputs(self) -> dict:
        """What it does: ctx -> one batch-1 input dict for this graph (tracing, converter self-checks): eval
        sample 0, or for a component what the fp32 torch components feed it on eval sample 0."""
        return self.example if self.example is not None else self.dataset.split("eval").sample(0)

    def memo(self, namespace: str):
        """What it does: a namespace -> the cache's shared sub-result store (pipeline/cache.py Memo); the only
        place besides `workdir` a stage may write, for results keyed by their own content."""
        from .cache import Cache

        if self.cache_root is None:
            raise RuntimeError("this stage context has no cache")
        return Cache(self.cache_root).memo(namespace)

    def artifact(self, kind: str, component: str = "model", precision: str = "fp32", meta: dict | None = None,
                 main_file: str | None = None) -> Artifact:
        meta = dict(meta or {})
        if main_file:
            meta["main_file"] = main_file
        return Artifact(kind=kind, stage=self.stage.name, component=component, precision=precision,
                        files=collect_files(self.workdir), parents=self.parents,
                        tool_versions=self.stage.tool_versions(), meta=meta, root=self.workdir)


def missing_imports(names: tuple[str, ...]) -> list[str]:
    return [n for n in names if importlib.util.find_spec(n) is None]


def get_stage(name: str, ref: str | None = None) -> Stage:
    """Instantiate a registered stage (or the "module:Class" `ref` given); its module is imported now, never at
    `import pipeline`."""
    target = ref or STAGES[name]
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    missing = missing_imports(cls.requires)
    if missing:
        raise MissingDependencyError(
            f"stage '{name}' needs {', '.join(missing)}: pip install 'edgepipe[{cls.extra}]'"
        )
    return cls()


def stage_class_info(name: str) -> dict[str, Any]:
    """Static facts of a stage without importing heavy modules (its module must stay light at import)."""
    module_name, cls_name = STAGES[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return {"consumes": cls.consumes, "produces": cls.produces, "requires": cls.requires, "extra": cls.extra,
            "needs_calibration": cls.needs_calibration, "version": cls.version}


_VERSION_NAMES = {"onnxruntime": "onnxruntime", "onnx": "onnx", "torch": "torch", "onnxslim": "onnxslim",
                  "numpy": "numpy", "openvino": "openvino", "nncf": "nncf"}


def tool_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the given distributions (without importing them)."""
    return {n: _version(n) for n in sorted(set(names) | {"numpy"})}


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_VERSION_NAMES.get(name, name))
    except PackageNotFoundError:
        return "absent"
