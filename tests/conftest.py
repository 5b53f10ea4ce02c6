"""Shared fixtures: paths, a CLI runner in a subprocess, and tiny configs written into tmp dirs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("EDGEPIPE_DEBUG", None)
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    def _run(*args, env=None):
        return run_cli(list(args), tmp_path, env)

    return _run


def write_release(path: Path, **overrides) -> Path:
    """A release YAML based on the default one, with top-level overrides."""
    import yaml

    base = yaml.safe_load((REPO / "examples" / "tiny-mm.yaml").read_text())
    base["model"]["dataset"] = str(REPO / "calibration_data" / "tiny_mm")
    base.update(overrides)
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    """(runner, state) for the tiny example release: tiny model trained, fp32 reference computed, cache in tmp.

    Stage tests run their stages with `runner.run_stage(state, name, artifact, target_name, profile, calib)`.
    """
    from pipeline.cache import Cache
    from pipeline.config import load_release
    from pipeline.plan import make_plan
    from pipeline.progress import Progress
    from pipeline.runner import Runner

    cfg, base = load_release(REPO / "examples" / "tiny-mm.yaml")
    plan = make_plan(cfg, base)
    runner = Runner(Cache(tmp_path_factory.mktemp("stage-cache")), Progress(enabled=False), log=lambda m: None)
    state = runner.prepare(plan)
    state.torch_model = runner.run_stage(state, "load", None)
    state.reference = runner.run_stage(state, "reference", state.torch_model)
    return runner, state


def calibration_for(runner, state, profile):
    """The checked calibration subset a target profile asks for."""
    from pipeline.plan import TargetPlan

    return runner.calibration_for(state, TargetPlan(profile=profile, chain=()))
