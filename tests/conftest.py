"""Shared fixtures: paths, a CLI runner in a subprocess, and tiny configs written into tmp dirs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# In CI (EDGEPIPE_REQUIRE_ALL=1, set by .ci/run) every skip is a failure: a missing dependency or service must not
# pass silently. Only skips whose reason starts with "optional:" (real hardware the environment did not name) stay
# skips there.
REQUIRE_ALL = os.environ.get("EDGEPIPE_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_ALL and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if reason.removeprefix("Skipped: ").startswith("optional:"):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under EDGEPIPE_REQUIRE_ALL=1 (a required dependency or service is missing): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # a module-level skip (importorskip at import time) never reaches runtest_makereport
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.removeprefix("Skipped: ").startswith("optional:"):
            report.outcome = "failed"
            report.longrepr = f"module skipped under EDGEPIPE_REQUIRE_ALL=1: {reason}"


# Heaviest first, so that under pytest-xdist (`-n 2 --dist loadfile`, the README's test command) the builds that take
# minutes start at once and the short tests fill the other worker around them; a stable sort keeps file order.
_FIRST = ("test_default_release.py", "test_e2e.py", "test_install.py")


def pytest_collection_modifyitems(config, items):
    def weight(item):
        name = item.path.name
        return (_FIRST.index(name) if name in _FIRST else len(_FIRST)) if item.get_closest_marker("slow") else 99

    items.sort(key=weight)


# One stage cache for every CLI build of the session that does not name its own (--cache-dir or $EDGEPIPE_CACHE),
# and for the stage tests' tiny_build: the tiny model is trained, referenced and exported once, not once per test.
# Under pytest-xdist both workers share it (builds on one cache claim each stage output, so the second asker waits
# for the first instead of computing it too). Tests about the cache itself (damage, kill and resume,
# reproducibility across caches) pass their own.
_SHARED_CACHE: list[Path] = []


def _shared_cache_root(tmp_path_factory) -> Path:
    if not _SHARED_CACHE:
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):  # .../pytest-N/popen-gwK: the session's folder is its parent
            base = base.parent
        root = base / "shared-cache"
        root.mkdir(exist_ok=True)
        _SHARED_CACHE.append(root)
    return _SHARED_CACHE[0]


@pytest.fixture(scope="session", autouse=True)
def shared_cli_cache(tmp_path_factory) -> Path:
    return _shared_cache_root(tmp_path_factory)


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 900,
            kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`edgepipe ARGS` in a subprocess. kill_at: the build SIGKILLs itself (all its processes) when that stage is
    about to commit (tests/kill_at_commit/sitecustomize.py); it then runs in a session of its own. Without
    --cache-dir in ARGS or EDGEPIPE_CACHE in `env`, the build uses the session's shared cache."""
    full_env = dict(os.environ)
    full_env.pop("EDGEPIPE_DEBUG", None)
    full_env.pop("EDGEPIPE_CACHE", None)
    if _SHARED_CACHE and "--cache-dir" not in args:
        full_env["EDGEPIPE_CACHE"] = str(_SHARED_CACHE[0])
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    if kill_at is not None:
        full_env["PYTHONPATH"] = str(REPO / "tests" / "kill_at_commit") + os.pathsep + full_env["PYTHONPATH"]
        full_env["EDGEPIPE_TEST_KILL_AT"] = kill_at
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, start_new_session=kill_at is not None)


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


def build_release(tmp_path: Path, release: str, **overrides) -> tuple[Path, dict]:
    """A tiny-mm release with overrides built by the CLI -> (dist/<release>, the host-onnx-fp32 manifest)."""
    import json

    cfg = write_release(tmp_path / "r.yaml", release=release, **overrides)
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    root = tmp_path / "dist" / release
    return root, json.loads((root / "host-onnx-fp32" / "manifest.json").read_text())


def exported_shapes(root: Path) -> dict[str, set]:
    """Tensor shapes in the fp32 ONNX initializers, OpenVINO constants and TFLite tensors of a release."""
    import onnx
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter

    onnx_shapes = {tuple(i.dims) for i in onnx.load(str(root / "host-onnx-fp32" / "model.onnx")).graph.initializer}
    ov_shapes = {tuple(op.get_output_shape(0)) for op in ov.Core().read_model(
        str(root / "host-openvino-fp32" / "model.xml")).get_ops() if op.get_type_name() == "Constant"}
    interp = Interpreter(model_path=str(root / "host-tflite-fp32" / "model.tflite"))
    return {"onnx": onnx_shapes, "openvino": ov_shapes,
            "tflite": {tuple(d["shape"]) for d in interp.get_tensor_details()}}


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
    runner = Runner(Cache(_shared_cache_root(tmp_path_factory)), Progress(enabled=False), log=lambda m: None)
    state = runner.prepare(plan)
    state.torch_model = runner.run_stage(state, "load", None)
    state.reference = runner.run_stage(state, "reference", state.torch_model)
    return runner, state


def calibration_for(runner, state, profile):
    """The checked calibration subset a target profile asks for."""
    from pipeline.plan import TargetPlan

    return runner.calibration_for(state, TargetPlan(profile=profile, chain=()))
