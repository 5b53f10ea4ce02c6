"""OpenVINO stages on the tiny model: every IR is loaded and run; fp32 stays fp32, int8 is quantized and calibrated."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("openvino")
# Not imported here: nncf runs in the stages' children, whose environment turns its telemetry off.
if importlib.util.find_spec("nncf") is None:
    pytest.skip("nncf is not installed", allow_module_level=True)

from pipeline.config import load_profile  # noqa: E402
from pipeline.errors import StageError  # noqa: E402
from targets.agent import check_golden, load_golden, open_model  # noqa: E402

from .conftest import calibration_for, run_cli, write_release  # noqa: E402

@pytest.fixture(scope="module")
def ov_models(tiny_build):
    runner, state = tiny_build
    profile = load_profile("host-openvino-int8", state.plan.base_dir)
    onnx = runner.run_stage(state, "export_onnx", state.torch_model, profile.name, profile)
    fp32 = runner.run_stage(state, "convert_openvino", onnx, profile.name, profile)
    int8 = runner.run_stage(state, "quantize_openvino", fp32, profile.name, profile,
                            calibration_for(runner, state, profile))
    return runner, state, profile, onnx, fp32, int8


def _with_quantization(profile, **changes):
    return profile.model_copy(update={"quantization": profile.quantization.model_copy(update=changes)})


def _run_once(art, state):
    out = open_model(str(art.main_file), "openvino", 1).run(state.dataset.split("eval").sample(0))["logits"]
    assert out.shape == (1, 4) and np.isfinite(out).all()
    return out


def _constant_types(art) -> set[str]:
    import openvino as ov

    model = ov.Core().read_model(str(art.main_file))
    return {op.get_output_element_type(0).get_type_name() for op in model.get_ordered_ops()
            if op.get_type_name() == "Constant"}


def test_fp32_ir_runs_and_matches_onnx(ov_models):
    _, state, _, onnx, fp32, _ = ov_models
    assert fp32.precision == "fp32" and fp32.meta["compress_to_fp16"] is False
    assert {"model.xml", "model.bin"} <= set(fp32.files) and fp32.main_file.name == "model.xml"
    _run_once(fp32, state)
    session = open_model(str(fp32.main_file), "openvino", 1)
    assert [(d.name, d.dtype) for d in session.input_details] == [
        ("image", "float32"), ("tokens", "int64"), ("audio", "float32")]
    reference = open_model(str(onnx.main_file), "onnx", 1)
    split = state.dataset.split("eval")
    for i in range(8):
        np.testing.assert_allclose(session.run(split.sample(i))["logits"], reference.run(split.sample(i))["logits"],
                                   atol=1e-4, rtol=1e-4)


def test_fp32_weights_are_fp32_and_fp16_compression_halves_them(ov_models):
    import onnx as onnx_lib
    from onnx import numpy_helper

    runner, state, profile, onnx, fp32, _ = ov_models
    weights = sum(numpy_helper.to_array(t).nbytes for t in onnx_lib.load(str(onnx.main_file)).graph.initializer)
    fp32_bin = fp32.path("model.bin").stat().st_size
    assert 0.9 * weights <= fp32_bin <= 1.1 * weights
    assert "f16" not in _constant_types(fp32)
    fp16 = runner.run_stage(state, "convert_openvino", onnx, "fp16", profile.model_copy(update={"precision": "fp16"}))
    assert fp16.precision == "fp16" and fp16.meta["compress_to_fp16"] is True and "f16" in _constant_types(fp16)
    assert 0.4 * fp32_bin <= fp16.path("model.bin").stat().st_size <= 0.6 * fp32_bin
    np.testing.assert_allclose(_run_once(fp16, state), _run_once(fp32, state), atol=0.05)


def test_fp32_ir_is_shared_by_the_fp32_and_int8_targets(ov_models):
    runner, state, _, onnx, fp32, _ = ov_models
    profile = load_profile("host-openvino-fp32", state.plan.base_dir)
    again = runner.run_stage(state, "convert_openvino", onnx, profile.name, profile)
    assert again.sha256 == fp32.sha256 and state.records[-1].cached


def test_int8_is_quantized_smaller_and_runs(ov_models):
    _, state, profile, _, fp32, int8 = ov_models
    assert int8.precision == "int8" and int8.parents == (fp32.sha256,)
    assert int8.meta["ops"].get("FakeQuantize", 0) > 0 and int8.meta["quantized_weights"]
    assert "i8" in _constant_types(int8) and int8.meta["compress_to_fp16"] is False
    assert int8.path("model.bin").stat().st_size < 0.6 * fp32.path("model.bin").stat().st_size
    assert int8.meta["calibration"] == {"method": "minmax", "tool": "nncf", "samples": profile.calibration.samples}
    assert int8.meta["nncf"]["preset"] == profile.quantization.preset
    _run_once(int8, state)


def test_int8_meets_the_gate(ov_models):
    runner, state, profile, _, _, int8 = ov_models
    ver = runner.run_stage(state, "verify", int8, profile.name, profile, deps={"reference": state.reference})
    assert ver.meta["accuracy_drop_pt"] <= 1.0 and ver.meta["agreement"] >= profile.gates.min_agreement
    # the golden vectors are the artifact's own outputs on the first samples, and they check against it
    golden = load_golden(ver.root / "golden")
    assert golden.count == state.plan.release.golden_count and golden.outputs == list(ver.meta["outputs"])
    result = check_golden(open_model(str(int8.main_file), "openvino", 1), golden)
    assert result["passed"] == result["checked"] == golden.count, result


def test_keep_float_is_honoured_and_quantization_is_quiet(ov_models, capfd):
    runner, state, profile, _, fp32, int8 = ov_models
    # The release's model.keep_float applies although the target lists none.
    assert profile.quantization.keep_float == [] and state.plan.release.model.keep_float
    assert "/audio/logmel/MatMul" in int8.meta["kept_float_nodes"]
    assert all(n.startswith("/audio/logmel") for n in int8.meta["kept_float_nodes"])
    keep = _with_quantization(profile, keep_float=["/audio/logmel", "Log"])
    before = {k: os.environ.get(k) for k in ("CI", "NNCF_CI")}
    art = runner.run_stage(state, "quantize_openvino", fp32, "keep", keep, calibration_for(runner, state, keep))
    assert art.meta["ignored_scope"]["types"] == ["Log"] and "/audio/logmel/MatMul" in art.meta["kept_float_nodes"]
    _run_once(art, state)
    out, err = capfd.readouterr()
    assert out == "" and "INFO" not in err  # NNCF's log lines and progress bars stay out of the build output
    assert {k: os.environ.get(k) for k in ("CI", "NNCF_CI")} == before  # telemetry switches: the child's only
    assert "nncf.log" in {p.name for p in (art.root / "logs").iterdir()} and "logs/nncf.log" not in art.files


def test_no_telemetry_is_sent(ov_models, tmp_path, monkeypatch):
    """A child started like the OpenVINO stages' children: convert_model, then both telemetry decisions."""
    pytest.importorskip("openvino_telemetry")
    from pipeline.export.child import run_child
    from pipeline.export.openvino import OPENVINO_ENV

    for key in OPENVINO_ENV:  # the user's environment does not decide it
        monkeypatch.delenv(key, raising=False)
    got = run_child("tests.child_probes:telemetry", str(ov_models[3].main_file), what="probe",
                    log_path=tmp_path / "probe.log", env=OPENVINO_ENV)
    assert got == [False, "MagicMock"]  # OpenVINO's telemetry declined, NNCF's a stub
    assert all(key not in os.environ for key in OPENVINO_ENV)  # only the child's environment had them


@pytest.mark.parametrize("keep_float", [["no_such_node"], ["/audio/logmel", "Conv"]])
def test_unmatched_keep_float_entry_fails(ov_models, keep_float):
    runner, state, profile, _, fp32, _ = ov_models
    bad = _with_quantization(profile, keep_float=keep_float)
    with pytest.raises(StageError, match=f"'{keep_float[-1]}'"):
        runner.run_stage(state, "quantize_openvino", fp32, "bad", bad, calibration_for(runner, state, bad))


def test_settings_nncf_cannot_honour_are_refused(ov_models):
    runner, state, profile, _, fp32, _ = ov_models
    percentile = profile.model_copy(update={"calibration": profile.calibration.model_copy(
        update={"method": "percentile"})})
    for bad, match in ((percentile, "calibration.method"),
                       (_with_quantization(profile, activation_type="int8"), "activation_type"),
                       (_with_quantization(profile, symmetric_activations=True), "symmetric_activations"),
                       # a component's hints can ask for it past the profile validator: the stage refuses too
                       (_with_quantization(profile, activations="dynamic"), "activations='dynamic'")):
        with pytest.raises(StageError, match=match):
            runner.run_stage(state, "quantize_openvino", fp32, "bad", bad, calibration_for(runner, state, bad))


@pytest.mark.slow
def test_build_publishes_openvino_bundles_that_verify(tmp_path):
    release = write_release(tmp_path / "release.yaml", release="ov-e2e",
                            targets=["host-openvino-fp32", "host-openvino-int8"])
    proc = run_cli(["build", str(release), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = tmp_path / "dist" / "ov-e2e"
    index = json.loads((dist / "index.json").read_text())
    assert [t["status"] for t in index["targets"]] == ["passed", "passed"]
    for target in ("host-openvino-fp32", "host-openvino-int8"):
        manifest = json.loads((dist / target / "manifest.json").read_text())
        assert manifest["model_files"] == ["model.bin", "model.xml"] and manifest["format"] == "openvino"
        assert manifest["verification"]["runtime"]["name"] == "openvino"
        check = run_cli(["verify", str(dist / f"{target}.tar.gz")], tmp_path)
        assert check.returncode == 0 and "golden vectors" in check.stdout, check.stdout + check.stderr


def _agreement(a, b, state) -> float:
    """Top-1 agreement of two OpenVINO IRs over the eval split, run as the agent runs them (CPU, one thread)."""
    sessions = [open_model(str(art.main_file), "openvino", 1) for art in (a, b)]
    split = state.dataset.split("eval")
    top = [[int(np.argmax(s.run(split.sample(i))["logits"])) for i in range(len(split))] for s in sessions]
    return float(np.mean(np.equal(*top)))


def test_int8_of_lowrank_factorized_linears_agrees_with_fp32(ov_models):
    """Regression: the first half of a factorized Linear (a bias-less MatMul straight into another MatMul) with
    per-channel int8 weights made the CPU plugin's Snippets MLP-sequence Subgraph compute garbage (tiny model with
    the head factorized: accuracy 10 %, constant logits). Those MatMuls now stay float, and nothing else does."""
    import openvino as ov

    from pipeline.config import CompressionStep
    from pipeline.export.openvino import snippets_mlp_hazards

    runner, state, profile, _, plain_fp32, _ = ov_models
    assert snippets_mlp_hazards(ov.Core().read_model(str(plain_fp32.main_file))) == []  # no Linear pairs: no change
    step = CompressionStep.model_validate({"method": "lowrank", "energy": 0.9, "layers": ["head.*"]})
    release = state.plan.release.model_copy(update={"compression": [step]})
    torch_art = runner.run_stage(state, "compress", state.torch_model, "lowrank", release=release)
    onnx = runner.run_stage(state, "export_onnx", torch_art, profile.name, profile)
    fp32 = runner.run_stage(state, "convert_openvino", onnx, profile.name, profile)
    int8 = runner.run_stage(state, "quantize_openvino", fp32, profile.name, profile,
                            calibration_for(runner, state, profile))
    assert np.abs(_run_once(int8, state)).max() < 1e3  # the broken kernel gave |logits| ~1e5..1e30
    assert _agreement(int8, fp32, state) >= 0.95
    first_halves = ["/head/head.0/head.0.0/MatMul", "/head/head.2/head.2.0/MatMul"]
    assert int8.meta["runtime_workaround_float_nodes"] == first_halves
    assert set(first_halves) <= set(int8.meta["kept_float_nodes"]) and int8.meta["quantized_weights"]


def _first_conv_int8_range(art) -> int:
    """Largest |q| of the int8 weights of the first Convolution in an int8 IR (127: full 8 bits; 63/64: 7 bits)."""
    import openvino as ov

    model = ov.Core().read_model(str(art.main_file))
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            node = op.input_value(1).get_node()
            while node.get_type_name() != "Constant":  # Multiply(scale) <- Convert <- Constant(i8)
                node = node.input_value(0).get_node()
            return int(np.abs(node.get_data().astype(np.int32)).max())
    raise AssertionError("no convolution in the IR")


def test_overflow_fix_setting_reaches_nncf_and_needs_vnni(ov_models):
    """The fix reaches NNCF as resolved for the device: 'auto' gives 8-bit weights on a device with VNNI and 7-bit
    weights on an AVX2 one; 'disable' on an AVX2 device is refused. The devices are declared (no probe), so this
    holds on build hosts of either kind."""
    from targets.device import declared_facts

    runner, state, profile, _, fp32, _ = ov_models
    vnni = declared_facts({"arch": "x86_64", "features": ["avx2", "avx512f", "avx512_vnni"]}, "local")
    avx2 = declared_facts({"arch": "x86_64", "features": ["avx2"]}, "local")
    first = _with_quantization(profile, overflow_fix="first_layer")
    seven = runner.run_stage(state, "quantize_openvino", fp32, "of-first", first, calibration_for(runner, state, first))
    assert seven.meta["nncf"]["overflow_fix"] == "first_layer" and _first_conv_int8_range(seven) <= 64
    auto = _with_quantization(profile, overflow_fix="auto")
    eight = runner.run_stage(state, "quantize_openvino", fp32, "of-vnni", auto, calibration_for(runner, state, auto),
                             device=vnni)
    assert eight.meta["nncf"]["overflow_fix"] == "disable" and _first_conv_int8_range(eight) == 127
    on_avx2 = runner.run_stage(state, "quantize_openvino", fp32, "of-avx2", auto,
                               calibration_for(runner, state, auto), device=avx2)
    assert on_avx2.meta["nncf"]["overflow_fix"] == "enable" and _first_conv_int8_range(on_avx2) <= 64
    full = _with_quantization(profile, overflow_fix="disable")
    with pytest.raises(StageError, match="overflow_fix 'disable' needs a device whose int8 sums cannot saturate"):
        runner.run_stage(state, "quantize_openvino", fp32, "no-vnni", full, calibration_for(runner, state, full),
                         device=avx2)
