"""Build planning: release config + target profiles -> a checked Plan (stage chains per target); runs nothing.

Everything that can be known before running is checked here: profiles exist, stage kinds fit, the imports
each stage needs are installed, the dataset and its calibration split are present and large enough, the
model factory's module exists (found on disk, never imported: a package's __init__ is code, and plan runs none).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ReleaseConfig, TargetProfile, load_profile, resolve_dataset
from .data import split_path
from .errors import ConfigError, MissingDependencyError, ModelFactoryError
from .formats import EXPORT_CHAINS  # noqa: F401 (format, precision) -> stage chain, from each format's record
from .stages import missing_imports, stage_class_info

SHARED_STAGES = ("load", "reference")
CHECK_STAGES = ("verify", "profile")


@dataclass
class TargetPlan:
    profile: TargetProfile
    chain: tuple[str, ...]
    export: str = "fused"  # fused | components: one chain for the whole graph, or the chain run per component
    suffix: str = ""  # "-components" when a release builds both, so the two bundles get distinct names

    @property
    def name(self) -> str:
        return self.profile.name + self.suffix


@dataclass
class Plan:
    release: ReleaseConfig
    base_dir: Path
    dataset_dir: Path
    targets: list[TargetPlan] = field(default_factory=list)

    def rows(self) -> list[list[str]]:
        rows = []
        for tp in self.targets:
            p = tp.profile
            checks = ["verify"] + (["sensitivity"] if p.quantization.sensitivity.enabled else []) + \
                (["profile"] if self.release.profile else [])
            calib = f"{p.calibration.method} x{p.calibration.samples}" if p.precision == "int8" else "-"
            rows.append([tp.name, p.format, p.precision, " → ".join(SHARED_STAGES[:1] + tp.chain + tuple(checks)),
                         calib, p.transport.kind])
        return rows


def _split_count(path: Path) -> int:
    """Number of samples in a split npz, read from the label array's header only."""
    with zipfile.ZipFile(path) as zf:
        with zf.open("label.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
    return int(shape[0])


def _check_dataset(cfg: ReleaseConfig, dataset_dir: Path, profiles: list[TargetProfile]) -> None:
    if not dataset_dir.is_dir():
        raise ConfigError(f"model.dataset: directory {dataset_dir} does not exist; create it or fix the path")
    for split in ("calibration", "eval"):  # train.npz only for factories that train (they check it themselves)
        if not split_path(dataset_dir, split).is_file():
            raise ConfigError(f"model.dataset: {split_path(dataset_dir, split)} is missing")
    try:
        n_calib = _split_count(split_path(dataset_dir, "calibration"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"{split_path(dataset_dir, 'calibration')}: unreadable ({err}); it needs a 'label' array"
                          ) from err
    for p in profiles:
        if p.precision == "int8" and p.calibration.samples > n_calib:
            raise ConfigError(
                f"target '{p.name}': calibration.samples={p.calibration.samples} but {dataset_dir.name}/calibration.npz "
                f"has {n_calib} samples; lower it or add data"
            )
        if p.precision == "int8" and p.calibration.samples < p.calibration.min_samples:
            raise ConfigError(f"target '{p.name}': calibration.samples={p.calibration.samples} is below "
                              f"calibration.min_samples={p.calibration.min_samples}")


def _check_chain(name: str, chain: tuple[str, ...]) -> None:
    kind = None
    needs: set[str] = set()
    extras: set[str] = set()
    for stage in SHARED_STAGES[:1] + chain + CHECK_STAGES:
        info = stage_class_info(stage)
        if info["consumes"] and kind not in info["consumes"]:
            raise ConfigError(f"target '{name}': stage '{stage}' consumes {info['consumes']}, gets '{kind}'")
        if stage not in CHECK_STAGES:
            kind = info["produces"]
        missing = missing_imports(info["requires"])
        needs.update(missing)
        if missing:
            extras.add(info["extra"])
    if needs:
        raise MissingDependencyError(
            f"target '{name}' needs {', '.join(sorted(needs))}: pip install 'edgepipe[{','.join(sorted(extras))}]'"
        )


def make_plan(cfg: ReleaseConfig, base_dir: Path) -> Plan:
    """Check the whole build and return its plan; raises ConfigError-family errors (exit code 2)."""
    seen = set()
    profiles = []
    for ref in cfg.targets:
        profile = load_profile(ref, base_dir)
        if cfg.gates:  # the release's gates for its model, over the profile's
            profile = profile.model_copy(update={"gates": type(profile.gates).model_validate(
                {**profile.gates.model_dump(include=profile.gates.model_fields_set), **cfg.gates})})
        if profile.name in seen:
            raise ConfigError(f"targets: '{profile.name}' is listed twice")
        seen.add(profile.name)
        profiles.append(profile)
    module = cfg.model.factory.split(":")[0]
    if not module_findable(module):
        raise ModelFactoryError(f"model.factory: module '{module}' not found; check the name or install it")
    dataset_dir = resolve_dataset(cfg, base_dir)
    _check_dataset(cfg, dataset_dir, profiles)
    plan = Plan(release=cfg, base_dir=base_dir, dataset_dir=dataset_dir)
    for p in profiles:
        chain = EXPORT_CHAINS.get((p.format, p.precision))
        if chain is None:
            raise ConfigError(f"target '{p.name}': {p.format} {p.precision} is not supported yet")
        rounding = cfg.model.weight_rounding
        if p.precision == "int8" and rounding is not None and p.format in rounding.formats:
            chain = (chain[0], "round_weights") + chain[1:]
        _check_chain(p.name, chain)
        _check_sensitivity(cfg, p)
        plan.targets.extend(_target_plans(cfg.model.export, p, chain))
    return plan


def module_findable(name: str) -> bool:
    """What it does: a dotted module name -> whether it exists, without importing it or any parent package.

    importlib.util.find_spec("pkg.sub") imports `pkg` (runs its __init__) to read its __path__; here only the top
    name goes through find_spec (which locates without executing), and each further part is looked up as a file
    or folder under the parent's search locations, plus the same sub-folder of every sys.path entry (what a
    pkgutil.extend_path __init__ would add)."""
    if name in sys.modules:  # already imported (pipeline's own factories): nothing to run
        return True
    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    for depth, part in enumerate(rest, start=1):
        parents = name.split(".")[:depth]
        loaded = sys.modules.get(".".join(parents))
        search = getattr(loaded, "__path__", None) if loaded is not None else \
            (spec.submodule_search_locations if spec is not None else None)
        if search is None or not part.isidentifier():
            return False
        extra = [os.path.join(p, *parents) for p in sys.path if isinstance(p, str)]
        locations = list(dict.fromkeys([*search, *(p for p in extra if os.path.isdir(p))]))
        spec = importlib.machinery.PathFinder.find_spec(".".join(parents + [part]), locations)
    return spec is not None


def _check_sensitivity(cfg: ReleaseConfig, profile: TargetProfile) -> None:
    """quantization.sensitivity needs a fused graph (its keep_float choices name nodes of the whole model) and
    onnxruntime (the ranking runs the fp32 ONNX export whatever the target's format)."""
    if not profile.quantization.sensitivity.enabled:
        return
    if cfg.model.export != "fused":
        raise ConfigError(f"target '{profile.name}': quantization.sensitivity works on fused graphs only; "
                          f"model.export is '{cfg.model.export}' (use fused, or disable the sensitivity pass)")
    info = stage_class_info("sensitivity")
    missing = missing_imports(info["requires"])
    if missing:
        raise MissingDependencyError(f"target '{profile.name}' (quantization.sensitivity) needs {', '.join(missing)}: "
                                     f"pip install 'edgepipe[{info['extra']}]'")


def _target_plans(export: str, profile: TargetProfile, chain: tuple[str, ...]) -> list[TargetPlan]:
    """model.export + one profile -> its target plans: fused, components, or both (the components one suffixed)."""
    if export == "fused":
        return [TargetPlan(profile=profile, chain=chain)]
    if export == "components":
        return [TargetPlan(profile=profile, chain=chain, export="components")]
    return [TargetPlan(profile=profile, chain=chain),
            TargetPlan(profile=profile, chain=chain, export="components", suffix="-components")]
