"""End-to-end builds of the tiny example release (examples/tiny-mm.yaml) through the real CLI: bundles, cache,
determinism, resume. The real default release has its own test (test_default_release.py)."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from pipeline.bundle import verify_bundle

from .conftest import REPO, run_cli, write_release

pytestmark = pytest.mark.slow
RELEASE = "tiny-mm"
TINY = REPO / "examples" / "tiny-mm.yaml"
TARGETS = ("host-onnx-fp32", "host-onnx-int8", "host-openvino-fp32", "host-openvino-int8", "host-tflite-fp32",
           "host-tflite-int8")


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    work = tmp_path_factory.mktemp("default")
    proc = run_cli(["build", str(TINY), "--no-progress"], work)
    return work, proc


def test_default_build_publishes_every_target(default_build):
    work, proc = default_build
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = work / "dist" / RELEASE
    index = json.loads((release / "index.json").read_text())
    assert [t["target"] for t in index["targets"]] == list(TARGETS)
    assert all(t["status"] == "passed" for t in index["targets"]), index["targets"]
    for target in TARGETS:
        # every tarball checks against its own manifest (hashes, file list), and carries that target's manifest
        manifest = json.loads((release / target / "manifest.json").read_text())
        checked = verify_bundle(release / f"{target}.tar.gz", run_golden=False)
        assert manifest["target"] == target and checked["files_checked"] == len(manifest["files"])
    report = (release / "report.html").read_text()
    assert all(target in report for target in TARGETS) and "</html>" in report
    resolved = yaml.safe_load((release / "release.resolved.yaml").read_text())
    assert resolved["release"]["targets"] == list(TARGETS) and resolved["release"]["release"] == RELEASE
    for column in ("target", "format", "precision", "size", "accuracy", "agreement", "p50 ms", "p90 ms", "status"):
        assert column in proc.stdout
    # one ONNX export serves all six targets: later stages must not alter it (it would be recomputed or differ)
    exports = [s for s in index["stages"] if s["stage"] == "export_onnx"]
    assert len(exports) == len(TARGETS) and len({s["sha256"] for s in exports}) == 1
    assert sum(not s["cached"] for s in exports) <= 1
    by_name = {t["target"]: t for t in index["targets"]}
    for fmt in ("onnx", "openvino", "tflite"):
        int8, fp32 = by_name[f"host-{fmt}-int8"], by_name[f"host-{fmt}-fp32"]
        assert int8["verification"]["accuracy_drop_pt"] <= 1.0
        assert int8["model_size_bytes"] < 0.7 * fp32["model_size_bytes"]


def test_manifest_describes_the_bundle(default_build):
    work, _ = default_build
    manifest = json.loads((work / "dist" / RELEASE / "host-onnx-int8" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["target"] == "host-onnx-int8"
    assert len(manifest["config_hash"]) == 64 and len(manifest["calibration_fingerprint"]) == 64
    assert {"torch", "onnx", "onnxruntime", "python", "edgepipe"} <= set(manifest["tool_versions"])
    assert manifest["model_files"] == ["model.onnx"]
    names = [t["name"] for t in manifest["iospec"]["inputs"]]
    assert names == ["image", "tokens", "audio"]
    quantized = [t for t in manifest["iospec"]["inputs"] if t["quantization"]]
    assert quantized and all("scale" in t["quantization"] for t in quantized)
    assert manifest["latency"]["latency_ms"]["p50"] > 0 and manifest["latency"]["threads"] == 1
    assert manifest["verification"]["samples"] >= 100
    assert "assets/vocab.txt" in manifest["files"] and "assets/labels.txt" in manifest["files"]
    lineage = manifest["model"]["lineage"]
    assert [s["stage"] for s in lineage] == ["load", "export_onnx", "quantize_onnx"]
    assert lineage[2]["parents"] == [lineage[1]["sha256"]]


def test_bundles_verify_and_tampering_is_caught(default_build, tmp_path):
    work, _ = default_build
    for target in TARGETS:
        proc = run_cli(["verify", str(work / "dist" / RELEASE / f"{target}.tar.gz")], work)
        assert proc.returncode == 0 and "golden vectors" in proc.stdout, proc.stderr
    bad = tmp_path / "host-onnx-fp32"
    shutil.copytree(work / "dist" / RELEASE / "host-onnx-fp32", bad)
    data = bytearray((bad / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model.onnx").write_bytes(bytes(data))
    proc = run_cli(["verify", str(bad)], tmp_path)
    assert proc.returncode == 1 and "model.onnx" in proc.stderr and "Traceback" not in proc.stderr


def test_warm_rebuild_hits_cache_and_is_byte_identical(default_build):
    work, _ = default_build
    release = work / "dist" / RELEASE
    before = {t: (release / f"{t}.tar.gz").read_bytes() for t in TARGETS}
    proc = run_cli(["build", str(TINY), "--no-progress"], work)
    assert proc.returncode == 0, proc.stderr
    import re

    cached, total = map(int, re.search(r"(\d+)/(\d+) stages from cache", proc.stdout).groups())
    assert cached == total >= 2 + 6 * 2
    assert {t: (release / f"{t}.tar.gz").read_bytes() for t in TARGETS} == before


def test_fresh_builds_are_reproducible_and_a_killed_build_resumes(tmp_path):
    """Two caches, no timings (profile: false): the session's shared cache (its stages computed from scratch by
    the session's first tiny build) and a fresh cache whose build is SIGKILLed inside quantize_onnx then resumed
    must give byte-identical archives."""
    # the int8 chain of each toolchain family (ONNX QDQ; onnx2tf + LiteRT calibration), the kill inside quantize_onnx
    targets = ["host-onnx-int8", "host-tflite-int8"]
    cfg = write_release(tmp_path / "r.yaml", profile=False, targets=targets)
    a = run_cli(["build", str(cfg), "--no-progress", "--dist", "da"], tmp_path)
    assert a.returncode == 0, a.stdout + a.stderr
    killed = run_cli(["build", str(cfg), "--no-progress", "--cache-dir", "cb", "--dist", "db"], tmp_path,
                     kill_at="quantize_onnx")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert not (tmp_path / "db").exists(), "a killed build must not leave anything in dist/"
    assert list((tmp_path / "cb" / "quantize_onnx").glob(".tmp-*")), "the crash point should leave a temp dir"
    resumed = run_cli(["build", str(cfg), "--no-progress", "--cache-dir", "cb", "--dist", "db"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "load           *                      cached" in resumed.stdout
    assert not list((tmp_path / "cb" / "quantize_onnx").glob(".tmp-*"))
    for target in targets:
        assert (tmp_path / "da" / RELEASE / f"{target}.tar.gz").read_bytes() == \
            (tmp_path / "db" / RELEASE / f"{target}.tar.gz").read_bytes()
