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


# --------------------------------------------------------------------------- hostile input (one line, exit 2)


def _profile(tmp_path, text: str) -> None:
    """A release with one target profile ./t.yaml (int8 ONNX plus `text`)."""
    (tmp_path / "t.yaml").write_text("name: t\nformat: onnx\nprecision: int8\n" + text)
    write_release(tmp_path / "r.yaml", targets=["./t.yaml"])


@pytest.mark.parametrize("text,needle", [
    ("calibration: {seed: -1}\n", "calibration.seed: Input should be greater than or equal to 0"),
    ("benchmark: {timeout_s: .inf}\n", "benchmark.timeout_s: Input should be a finite number"),
    ("benchmark: {timeout_s: 1.0e+9}\n", "benchmark.timeout_s: Input should be less than or equal to 86400"),
    ("calibration: {min_samples: 1}\n", "calibration.min_samples: Input should be greater than or equal to 8"),
    ("quantization: {keep_float: ['']}\n", "quantization.keep_float.0: Value error, an empty or blank entry"),
    ("name: u\n", "key 'name' is written twice"),
])
def test_bad_profile_setting(cli, tmp_path, text, needle):
    _profile(tmp_path, text)
    _assert_bad_input(cli("build", "r.yaml"), needle, tmp_path)


@pytest.mark.parametrize("overrides,needle", [
    ({"seed": -1}, "r.yaml: seed: Input should be greater than or equal to 0"),
    ({"release": "tiny\n"}, "'tiny\\n'"),
])
def test_bad_release_setting(cli, tmp_path, overrides, needle):
    write_release(tmp_path / "r.yaml", **overrides)
    _assert_bad_input(cli("build", "r.yaml"), needle, tmp_path)
    assert not (tmp_path / "dist").exists()


def test_blank_model_keep_float_entry(cli, tmp_path):
    import yaml

    cfg = write_release(tmp_path / "r.yaml")
    data = yaml.safe_load(cfg.read_text())
    data["model"]["keep_float_by_format"] = {"tflite": ["Log", "  "]}
    cfg.write_text(yaml.safe_dump(data))
    _assert_bad_input(cli("build", "r.yaml"), "model.keep_float_by_format.tflite.1", tmp_path)


def test_duplicate_yaml_key_in_release(cli, tmp_path):
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text() + "seed: 3\n")  # the release already sets seed: 0
    _assert_bad_input(cli("build", "r.yaml"), "key 'seed' is written twice", tmp_path)


def _broken_dataset(tmp_path, split: str, change) -> None:
    """tiny_mm copied into tmp_path/data with one split's fields rewritten by `change`; r.yaml uses it."""
    import shutil

    import numpy as np

    shutil.copytree(REPO / "calibration_data" / "tiny_mm", tmp_path / "data")
    path = tmp_path / "data" / f"{split}.npz"
    with np.load(path) as npz:
        fields = {k: npz[k] for k in npz.files}
    np.savez(path, **change(fields))
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace(str(REPO / "calibration_data" / "tiny_mm"), "./data"))


def test_chw_images_where_hwc_is_expected(cli, tmp_path):
    _broken_dataset(tmp_path, "calibration", lambda f: {**f, "image": f["image"].transpose(0, 3, 1, 2).copy()})
    proc = cli("build", "r.yaml", "--no-progress")
    _assert_bad_input(proc, "calibration.npz: field 'image' has per-sample shape (3, 24, 24)", tmp_path)
    assert "[N, 24, 24, 3]" in proc.stderr and "looks CHW" in proc.stderr


def test_dataset_fields_of_different_lengths(cli, tmp_path):
    _broken_dataset(tmp_path, "eval", lambda f: {**f, "text": f["text"][:-5]})
    proc = cli("build", "r.yaml", "--no-progress")
    _assert_bad_input(proc, "eval.npz: fields hold different sample counts", tmp_path)
    assert "text: 595" in proc.stderr and "image: 600" in proc.stderr


@pytest.mark.parametrize("option", ["--cache-dir", "--dist"])
def test_directory_option_is_a_file(cli, tmp_path, option):
    write_release(tmp_path / "r.yaml")
    (tmp_path / "taken").write_text("not a directory\n")
    proc = cli("build", "r.yaml", option, "taken", "--no-progress")
    label = "--cache-dir (or $EDGEPIPE_CACHE)" if option == "--cache-dir" else option
    _assert_bad_input(proc, f"{label} taken exists and is not a directory", tmp_path)
    assert "edgepipe build: release" not in proc.stdout  # refused before anything ran
    proc = cli("build", "r.yaml", option, "taken/sub", "--no-progress")
    _assert_bad_input(proc, "taken exists and is not a directory", tmp_path)


def test_cache_dir_from_the_environment_is_a_file(cli, tmp_path):
    write_release(tmp_path / "r.yaml")
    (tmp_path / "taken").write_text("")
    _assert_bad_input(cli("plan", "r.yaml", env={"EDGEPIPE_CACHE": "taken"}), "$EDGEPIPE_CACHE", tmp_path)


def test_plan_imports_no_factory_code(cli, tmp_path):
    """`plan` runs nothing: finding a dotted factory module must not execute its package's __init__."""
    pkg = tmp_path / "marked" / "models"
    pkg.mkdir(parents=True)
    (tmp_path / "marked" / "__init__.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').write('ran')\n")
    (pkg / "__init__.py").write_text(f"open({str(tmp_path / 'MARKER2')!r}, 'w').write('ran')\n")
    (pkg / "factory.py").write_text("from pipeline.models.tiny import TinyMultimodal as Factory\n")
    cfg = write_release(tmp_path / "r.yaml")
    cfg.write_text(cfg.read_text().replace("pipeline.models.tiny:TinyMultimodal", "marked.models.factory:Factory"))
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}"}
    proc = cli("plan", "r.yaml", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plan for release" in proc.stdout
    assert not (tmp_path / "MARKER").exists() and not (tmp_path / "MARKER2").exists()
    cfg.write_text(cfg.read_text().replace("marked.models.factory:", "marked.models.nope:"))
    _assert_bad_input(cli("plan", "r.yaml", env=env), "module 'marked.models.nope' not found", tmp_path)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.slow
def test_damaged_cache_entries_are_rebuilt(cli, tmp_path):
    """A cache entry whose artifact.json parses but holds wrong types, or a file where an entry's folder belongs,
    is treated as absent: the stage runs again and the build passes (it used to fail every later build)."""
    import json
    import shutil

    from .conftest import _SHARED_CACHE

    # A cache of its own (the session's is shared with the other xdist worker, which may write to it meanwhile):
    # one entry per stage, which this test damages. It starts with the session's trained tiny models (committed
    # entries never change, so copying them is safe; temp dirs and claims, named .*, are left out).
    write_release(tmp_path / "r.yaml", targets=["host-onnx-fp32"], profile=False)
    cache = tmp_path / "own-cache"
    if (_SHARED_CACHE[0] / "load").is_dir():
        shutil.copytree(_SHARED_CACHE[0] / "load", cache / "load", ignore=shutil.ignore_patterns(".*"))
    first = cli("build", "r.yaml", "--no-progress", "--cache-dir", "own-cache")
    assert first.returncode == 0, first.stdout + first.stderr
    [export] = [p for p in (cache / "export_onnx").iterdir() if not p.name.startswith(".")]
    meta = json.loads((export / "artifact.json").read_text())
    (export / "artifact.json").write_text(json.dumps({**meta, "files": sorted(meta["files"]), "meta": "oops"}))
    [reference] = [p for p in (cache / "reference").iterdir() if not p.name.startswith(".")]
    shutil.rmtree(reference)
    reference.write_text("a stray file where the entry's folder belongs\n")
    second = cli("build", "r.yaml", "--no-progress", "--cache-dir", "own-cache")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Traceback" not in second.stderr and "internal error" not in second.stderr
    ran = [line.split()[0] for line in second.stdout.splitlines() if " done " in line]
    assert "export_onnx" in ran and "reference" in ran and "load" not in ran, second.stdout
    assert (export / "artifact.json").is_file() and reference.is_dir()
    assert json.loads((export / "artifact.json").read_text())["meta"] != "oops"
