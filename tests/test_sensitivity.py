"""Sensitivity pass: the ranking names the fragile log-mel front-end, the gate fallback keeps the fewest worst
layers float and says so (log, manifest, report), and bad settings are one-line config errors."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import yaml

from pipeline.config import load_profile, load_release
from pipeline.errors import ConfigError
from pipeline.fallback import search_sizes
from pipeline.plan import make_plan
from pipeline.sensitivity import activation_qparams, fake_quant_weight

from .conftest import calibration_for, run_cli, write_release

LOGMEL = "/audio/logmel/"


def _profile(path, **quantization):
    """An ONNX int8 profile with the host gates (drop <= 1 pt, agreement >= 0.97) written to `path`."""
    data = {"name": path.stem, "format": "onnx", "precision": "int8",
            "quantization": quantization, "benchmark": {"warmup": 1, "iterations": 5},
            "gates": {"max_accuracy_drop_pt": 1.0, "min_agreement": 0.97, "golden_atol": 1e-3}}
    path.write_text(yaml.safe_dump(data))
    return path


# --- search and arithmetic (no frameworks) ---------------------------------------------------------------------

@pytest.mark.parametrize("needed, limit, chosen, tries", [
    (3, 8, 3, [1, 2, 4, 3]),
    (1, 8, 1, [1]),
    (5, 8, 5, [1, 2, 4, 8, 6, 5]),
    (4, 5, 4, [1, 2, 4, 3]),
    (9, 8, None, [1, 2, 4, 8]),
    (2, 1, None, [1]),
])
def test_search_finds_the_fewest_layers(needed, limit, chosen, tries):
    seen = []
    assert search_sizes(limit, lambda n: seen.append(n) or n >= needed) == chosen
    assert seen == tries


def test_search_stops_when_an_attempt_cannot_be_built():
    seen = []
    assert search_sizes(8, lambda n: seen.append(n) or (None if n == 2 else False)) is None
    assert seen == [1, 2]


def test_fake_quantization_stays_within_half_a_step():
    w = np.random.default_rng(0).normal(size=(6, 3, 3, 3)).astype(np.float32) * np.arange(1, 7)[:, None, None, None]
    fq = fake_quant_weight(w, 0, symmetric=True)
    step = np.abs(w).reshape(6, -1).max(1) / 127
    assert (np.abs(fq - w).reshape(6, -1).max(1) <= step / 2 + 1e-6).all()
    scale, zero = activation_qparams(-1.0, 3.0, "uint8", symmetric=False)
    assert zero.dtype == np.uint8 and 0 < int(zero) < 255 and float(scale) == pytest.approx(4 / 255)
    scale, zero = activation_qparams(1e-6, 1e3, "int8", symmetric=True)
    assert zero.dtype == np.int8 and int(zero) == 0 and float(scale) == pytest.approx(2e3 / 255)


# --- config errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, needle", [
    ({"precision": "fp32", "quantization": {"sensitivity": {"enabled": True}}}, "int8 targets only"),
    ({"quantization": {"sensitivity": {"enabled": True, "samples": 64}}, "calibration": {"samples": 40}},
     "sensitivity.samples=64 exceeds calibration.samples=40"),
    ({"quantization": {"sensitivity": {"max_float_layers": 0}}}, "max_float_layers"),
    ({"quantization": {"sensitivity": {"max_layers": 3}}}, "did you mean 'max_float_layers'"),
])
def test_bad_sensitivity_settings_are_config_errors(tmp_path, data, needle):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "format": "onnx", "precision": "int8", **data}))
    with pytest.raises(ConfigError) as err:
        load_profile(str(path), tmp_path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_sensitivity_needs_a_fused_graph(tmp_path):
    _profile(tmp_path / "t.yaml", sensitivity={"enabled": True})
    cfg_path = write_release(tmp_path / "r.yaml", targets=["./t.yaml"])
    data = yaml.safe_load(cfg_path.read_text())
    for export in ("components", "both"):
        data["model"]["export"] = export
        cfg_path.write_text(yaml.safe_dump(data))
        cfg, base = load_release(cfg_path)
        with pytest.raises(ConfigError, match=f"fused graphs only; model.export is '{export}'"):
            make_plan(cfg, base)
    data["model"]["export"] = "fused"
    cfg_path.write_text(yaml.safe_dump(data))
    plan = make_plan(*load_release(cfg_path))
    assert "sensitivity" in plan.rows()[0][3]


def test_sensitivity_settings_do_not_touch_quantizer_keys(tmp_path):
    on = load_profile(str(_profile(tmp_path / "a.yaml", sensitivity={"enabled": True, "samples": 16})), tmp_path)
    off = load_profile(str(_profile(tmp_path / "b.yaml")), tmp_path)
    assert on.quantization.stage_settings() == off.quantization.stage_settings()
    assert "sensitivity" not in off.quantization.stage_settings()


# --- the ranking on the tiny model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bare_state(tiny_build):
    """The tiny model's build state with model.keep_float removed: its log-mel front-end is quantized."""
    runner, state = tiny_build
    release = state.plan.release.model_copy(update={"model": state.plan.release.model.model_copy(
        update={"keep_float": []})})
    return runner, dataclasses.replace(state, plan=dataclasses.replace(state.plan, release=release))


def _ranking(runner, state, profile):
    fp32 = runner.run_stage(state, "export_onnx", state.torch_model, profile.name, profile)
    return runner.run_stage(state, "sensitivity", fp32, profile.name, profile,
                            calibration_for(runner, state, profile))


def test_ranking_names_the_log_mel_front_end_first(bare_state):
    runner, state = bare_state
    profile = load_profile("host-onnx-int8", state.plan.base_dir)
    meta = _ranking(runner, state, profile).meta
    rows = meta["ranking"]
    names = [r["node"] for r in rows]
    print("ranking:", [(r["node"], round(r["cost"], 5)) for r in rows[:6]], f"{meta['seconds']} s")
    assert all(n.startswith(LOGMEL) for n in names[:5]), names[:5]
    assert {f"{LOGMEL}MatMul", f"{LOGMEL}Add", f"{LOGMEL}Add_1"} <= set(names[:3])
    assert rows[0]["cost"] > 100 * rows[5]["cost"]  # the front-end is in a class of its own
    assert len(names) == len(set(names)) == meta["candidates"] and meta["samples"] == 32
    # onnxruntime's QDQ leaves Log float and reshapes cost nothing: neither is a candidate for an ONNX target
    assert f"{LOGMEL}Log" not in names and not any(r["op_type"] in ("Unsqueeze", "Slice") for r in rows)
    assert [r["cost"] for r in rows] == sorted((r["cost"] for r in rows), reverse=True)
    assert meta["all_candidates"]["cost"] > 0


def test_ranking_skips_what_keep_float_already_keeps(tiny_build):
    runner, state = tiny_build  # the default release keeps /audio/logmel/{Mul,Add,MatMul}* float
    profile = load_profile("host-tflite-int8", state.plan.base_dir)
    rows = _ranking(runner, state, profile).meta["ranking"]
    names = [r["node"] for r in rows]
    assert not any(n.startswith((f"{LOGMEL}Mul", f"{LOGMEL}Add", f"{LOGMEL}MatMul")) for n in names)
    assert f"{LOGMEL}Log" not in names  # the TFLite profile lists Log (an op type)
    assert rows[0]["cost"] < 0.01


# --- the gate fallback, end to end ------------------------------------------------------------------------------

def _build(tmp_path, cache_root, sensitivity: dict | None):
    quantization = {"sensitivity": sensitivity} if sensitivity else {}
    _profile(tmp_path / "onnx-int8-tight.yaml", **quantization)
    cfg = write_release(tmp_path / "r.yaml", targets=["./onnx-int8-tight.yaml"], profile=False)
    data = yaml.safe_load(cfg.read_text())
    data["model"]["keep_float"] = []
    cfg.write_text(yaml.safe_dump(data))
    return run_cli(["build", str(cfg), "--no-progress", "--cache-dir", str(cache_root), "--dist", "dist"], tmp_path)


def test_gate_fallback_keeps_the_worst_layers_float_and_declares_them(tiny_build, tmp_path):
    runner, _ = tiny_build
    without = _build(tmp_path, runner.cache.root, None)
    assert without.returncode == 1 and "accuracy drop" in without.stdout, without.stdout + without.stderr
    assert not (tmp_path / "dist" / "tiny-mm" / "onnx-int8-tight").exists()

    proc = _build(tmp_path, runner.cache.root, {"enabled": True, "max_float_layers": 6})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "gates failed (accuracy drop" in out and "layer(s) float automatically" in out
    release = tmp_path / "dist" / "tiny-mm"
    manifest = json.loads((release / "onnx-int8-tight" / "manifest.json").read_text())
    q = manifest["quantization"]
    auto, sens = q["auto_keep_float"], q["sensitivity"]
    assert auto and len(auto) <= 6 and all(n.startswith(LOGMEL) for n in auto)
    assert set(auto) <= set(q["kept_float_nodes"]) and q["settings"]["keep_float"] == []
    assert sens["before"]["passed"] is False and sens["before"]["accuracy_drop_pt"] > 1.0
    assert any(r.startswith("accuracy drop") for r in sens["before"]["reasons"])
    assert sens["passed"] and sens["after"]["accuracy_drop_pt"] <= 1.0
    assert sens["after"]["accuracy_drop_pt"] == manifest["verification"]["accuracy_drop_pt"]
    assert sens["ranking"][0]["node"].startswith(LOGMEL) and "seconds" not in sens
    sizes = [a["layers"] for a in sens["attempts"]]
    assert sizes[0] == 1 and len(auto) in sizes and all(a["passed"] == (a["layers"] >= len(auto))
                                                         for a in sens["attempts"])
    index = json.loads((release / "index.json").read_text())
    assert index["targets"][0]["sensitivity"]["auto_keep_float"] == auto
    report = (release / "report.html").read_text()
    assert "Sensitivity pass" in report and auto[0] in report
    assert "automatically" in (release / "onnx-int8-tight" / "README.md").read_text()
    check = run_cli(["verify", str(release / "onnx-int8-tight.tar.gz")], tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
