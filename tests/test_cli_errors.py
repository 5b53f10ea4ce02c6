"""Bad input through the real CLI: one clear line on stderr, exit code 2, nothing written to dist/."""
from __future__ import annotations

import textwrap

import pytest

from .conftest import REPO, write_release


def _assert_bad_input(proc, needle, tmp_path):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("edgepipe: error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert needle in lines[0], lines[0]
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").rglob("*"))


def test_missing_config(cli, tmp_path):
    _assert_bad_input(cli("build", "nope.yaml"), "no such file", tmp_path)


def test_malformed_yaml(cli, tmp_path):
    (tmp_path / "r.yaml").write_text("release: [oops\n")
    _assert_bad_input(cli("build", "r.yaml"), "not valid YAML", tmp_path)


def test_unknown_key(cli, tmp_path):
    write_release(tmp_path / "r.yaml", golden_cuont=3)
    _assert_bad_input(cli("build", "r.yaml"), "did you mean 'golden_count'", tmp_path)


def test_unknown_target(cli, tmp_path):
    write_release(tmp_path / "r.yaml", targets=["host-onnx-int7"])
    _assert_bad_input(cli("plan", "r.yaml"), "unknown target 'host-onnx-int7'", tmp_path)


def test_missing_calibration_dir(cli, tmp_path):
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace(str(REPO / "calibration_data" / "tiny_mm"), "./no_such_data"))
    _assert_bad_input(cli("build", "r.yaml"), "does not exist", tmp_path)


def test_too_few_calibration_samples(cli, tmp_path):
    (tmp_path / "t.yaml").write_text("name: t\nformat: onnx\nprecision: int8\ncalibration: {samples: 100000}\n")
    write_release(tmp_path / "r.yaml", targets=["./t.yaml"])
    _assert_bad_input(cli("build", "r.yaml"), "calibration.samples=100000", tmp_path)


def test_factory_module_missing(cli, tmp_path):
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace("pipeline.models.tiny:TinyMultimodal", "no_such_pkg.models:Factory"))
    _assert_bad_input(cli("build", "r.yaml"), "module 'no_such_pkg.models' not found", tmp_path)


def test_factory_fails_to_import(cli, tmp_path):
    (tmp_path / "broken_factory.py").write_text("raise RuntimeError('boom at import')\n")
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace("pipeline.models.tiny:TinyMultimodal", "broken_factory:Factory"))
    proc = cli("build", "r.yaml", env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    _assert_bad_input(proc, "boom at import", tmp_path)


@pytest.mark.slow
def test_wrong_input_shape(cli, tmp_path):
    (tmp_path / "shape_factory.py").write_text(textwrap.dedent("""
        from pipeline.models.tiny import TinyMultimodal

        class Factory(TinyMultimodal):
            def iospec(self, params):
                spec = super().iospec(params)
                image = spec.inputs[0].model_copy(update={"shape": (1, 3, 32, 32)})
                return spec.model_copy(update={"inputs": (image,) + spec.inputs[1:]})
    """))
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace("pipeline.models.tiny:TinyMultimodal", "shape_factory:Factory"))
    proc = cli("build", "r.yaml", env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    _assert_bad_input(proc, "expects (3, 32, 32)", tmp_path)


def test_verify_missing_bundle(cli, tmp_path):
    proc = cli("verify", "dist/x/y.tar.gz")
    assert proc.returncode == 1 and "no such bundle" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_denied_op_fails_only_that_target(cli, tmp_path):
    (tmp_path / "strict.yaml").write_text(
        "name: strict\nformat: onnx\nprecision: fp32\nops: {denied: ['Conv']}\n"
        "benchmark: {warmup: 1, iterations: 5}\n")
    write_release(tmp_path / "r.yaml", targets=["host-onnx-fp32", "./strict.yaml"])
    proc = cli("build", "r.yaml", "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "ops the target does not allow: Conv" in proc.stdout
    release = tmp_path / "dist" / "tiny-mm"
    assert (release / "host-onnx-fp32.tar.gz").is_file() and not (release / "strict.tar.gz").exists()
    import json

    index = json.loads((release / "index.json").read_text())
    assert [t["status"] for t in index["targets"]] == ["passed", "failed"]
