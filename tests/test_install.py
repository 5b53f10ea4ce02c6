"""The wheel built from this checkout, installed (not editable) into a fresh virtualenv, builds the tiny example
from outside the checkout: data, profiles, defaults and the device agent come from the installed package."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _run(argv, **kw):
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{argv}: {proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def test_wheel_in_a_fresh_venv_builds_the_tiny_example_outside_the_checkout(tmp_path, shared_cli_cache):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(REPO)], timeout=600)
    [wheel] = wheels.glob("edgepipe-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], timeout=300)
    python = venv / "bin" / "python"
    # The third-party toolchains (2 GB) come from this interpreter's site-packages through a .pth line, which adds
    # the directory but runs none of its .pth files (so this checkout's editable install stays invisible); that
    # the declared dependencies install on a fresh machine is what .ci/run's own fresh venv shows.
    target_site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                       ).stdout.strip()
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(target_site, "zz_toolchains.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "examples" / "tiny-mm.yaml", work / "release.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "EDGEPIPE_"))}
    where = _run([str(python), "-c", "import pipeline, targets, calibration_data; print(pipeline.__file__); "
                  "print(calibration_data.__file__); print(targets.__file__)"], cwd=work, env=env).stdout.split()
    assert all(p.startswith(target_site) for p in where), where  # the installed copy, not this checkout
    # Every module of the installed packages imports (a subpackage left out of the wheel fails here, even when
    # the build below finds its stage in the cache).
    walk = ("import importlib, pkgutil, pipeline, targets\n"
            "names = [m.name for p in (pipeline, targets) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]\n"
            "[importlib.import_module(n) for n in names]\n"
            "print(len(names))")
    assert int(_run([str(python), "-c", walk], cwd=work, env=env).stdout.split()[-1]) > 50
    # The session's stage cache (the tiny model trained once for the whole suite): what this test is about is the
    # installed package finding its data, profiles, defaults and agent; the stages' code is the checkout's.
    proc = subprocess.run([str(venv / "bin" / "edgepipe"), "build", "release.yaml", "--no-progress"], cwd=work,
                          env={**env, "EDGEPIPE_CACHE": str(shared_cli_cache)}, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    index = json.loads((work / "dist" / "tiny-mm" / "index.json").read_text())
    assert [t["status"] for t in index["targets"]] == ["passed"] * 6, index["targets"]
    resolved = (work / "dist" / "tiny-mm" / "release.resolved.yaml").read_text()
    assert f"dataset_dir: {target_site}/calibration_data/tiny_mm" in resolved
    # the bundle verifies with the installed CLI, golden vectors run by the installed agent
    check = subprocess.run([str(venv / "bin" / "edgepipe"), "verify", "dist/tiny-mm/host-tflite-int8.tar.gz"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert check.returncode == 0 and "golden vectors 4/4 passed" in check.stdout, check.stdout + check.stderr
