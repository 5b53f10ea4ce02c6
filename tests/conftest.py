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

    base = yaml.safe_load((REPO / "pipeline" / "defaults" / "release.yaml").read_text())
    base["model"]["dataset"] = str(REPO / "calibration_data" / "tiny_mm")
    base.update(overrides)
    path.write_text(yaml.safe_dump(base))
    return path
