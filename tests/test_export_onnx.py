"""ONNX stages on the tiny model: every exported file is loaded and run; int8 is really quantized and calibrated."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from pipeline.config import TargetProfile, load_profile
from pipeline.errors import StageError
from targets.agent import check_golden, load_golden, open_model

from .conftest import calibration_for


@pytest.fixture(scope="module")
def onnx_models(tiny_build):
    runner, state = tiny_build
    profile = load_profile("host-onnx-int8", state.plan.base_dir)
    fp32 = runner.run_stage(state, "export_onnx", state.torch_model, profile.name, profile)
    int8 = runner.run_stage(state, "quantize_onnx", fp32, profile.name, profile,
                            calibration_for(runner, state, profile))
    return runner, state, profile, fp32, int8


def test_fp32_export_is_valid_and_matches_torch(onnx_models):
    _, state, _, fp32, _ = onnx_models
    model = onnx.load(str(fp32.main_file))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["image", "tokens", "audio"]
    assert fp32.meta["opset"] == 17 and fp32.meta["nodes"] <= fp32.meta["nodes_exported"]
    session = open_model(str(fp32.main_file), "onnx", 1)
    ref = np.load(state.reference.path("eval.logits.npy"))
    split = state.dataset.split("eval")
    for i in range(8):
        out = session.run(split.sample(i))["logits"]
        np.testing.assert_allclose(out[0], ref[i], atol=1e-4, rtol=1e-4)


def test_int8_is_quantized_smaller_and_runs(onnx_models):
    _, state, _, fp32, int8 = onnx_models
    assert int8.precision == "int8" and int8.parents == (fp32.sha256,)
    ops = int8.meta["ops"]
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert int8.main_file.stat().st_size < 0.5 * fp32.main_file.stat().st_size
    quant_inputs = int8.meta["io_quantization"]
    assert "image" in quant_inputs and quant_inputs["image"]["scale"] > 0
    out = open_model(str(int8.main_file), "onnx", 1).run(state.dataset.split("eval").sample(0))["logits"]
    assert out.shape == (1, 4) and np.isfinite(out).all()


def test_int8_meets_the_default_gate(onnx_models):
    runner, state, profile, _, int8 = onnx_models
    ver = runner.run_stage(state, "verify", int8, profile.name, profile, deps={"reference": state.reference})
    assert ver.meta["accuracy_drop_pt"] <= 1.0 and ver.meta["agreement"] >= 0.97
    # the golden vectors are the artifact's own outputs on the first samples, and they check against it
    golden = load_golden(ver.root / "golden")
    assert golden.count == state.plan.release.golden_count and golden.outputs == list(ver.meta["outputs"])
    result = check_golden(open_model(str(int8.main_file), "onnx", 1), golden)
    assert result["passed"] == result["checked"] == golden.count, result


def test_calibration_settings_change_the_artifact(onnx_models):
    runner, state, profile, fp32, int8 = onnx_models
    other = profile.model_copy(update={"calibration": profile.calibration.model_copy(update={"samples": 64})})
    art = runner.run_stage(state, "quantize_onnx", fp32, "t64", other, calibration_for(runner, state, other))
    assert art.sha256 != int8.sha256


def test_keep_float_is_honoured_and_unknown_entries_fail(onnx_models):
    runner, state, profile, fp32, _ = onnx_models
    model = onnx.load(str(fp32.main_file))
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    keep = profile.model_copy(update={"quantization": profile.quantization.model_copy(
        update={"keep_float": [first_conv]})})
    art = runner.run_stage(state, "quantize_onnx", fp32, "keep", keep, calibration_for(runner, state, keep))
    kept = art.meta["kept_float_nodes"]
    assert first_conv in kept and "/audio/logmel/MatMul" in kept  # target-level + model-level entries
    q = onnx.load(str(art.main_file))
    conv = next(n for n in q.graph.node if n.name == first_conv)
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in conv.input), "kept-float conv got int8 inputs"
    bad = profile.model_copy(update={"quantization": profile.quantization.model_copy(
        update={"keep_float": ["no_such_node"]})})
    with pytest.raises(StageError, match="no_such_node"):
        runner.run_stage(state, "quantize_onnx", fp32, "bad", bad, calibration_for(runner, state, bad))


def test_profile_stage_runs_the_agent(onnx_models):
    runner, state, profile, fp32, _ = onnx_models
    fast = TargetProfile.model_validate({**profile.model_dump(), "precision": "fp32",
                                         "benchmark": {"threads": 1, "warmup": 2, "iterations": 10}})
    ver = runner.run_stage(state, "verify", fp32, "p", fast, deps={"reference": state.reference})
    prof = runner.run_stage(state, "profile", fp32, "p", fast, deps={"verification": ver})
    lat, samples = prof.meta["latency_ms"], prof.meta["samples_ms"]
    # the record's figures are those of its own per-run samples (one per timed run)
    assert prof.meta["iterations"] == len(samples) == 10
    assert lat["p50"] == pytest.approx(float(np.percentile(samples, 50)), abs=2e-6)
    assert lat["max"] == pytest.approx(max(samples), abs=2e-6) and lat["min"] == pytest.approx(min(samples), abs=2e-6)
    assert prof.meta["golden"]["passed"] == prof.meta["golden"]["checked"] == state.plan.release.golden_count


def test_weight_only_int8_keeps_float_compute_and_shrinks_the_weight(tmp_path):
    """model.kept_float_weights: int8 -> a kept-float MatMul reads its weight through DequantizeLinear from int8."""
    import onnx
    import onnxruntime as ort
    import torch

    from pipeline.export.onnx import weight_only_int8

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256, bias=False), torch.nn.Tanh(), torch.nn.Linear(256, 32))
    path = tmp_path / "m.onnx"
    torch.onnx.export(net.eval(), torch.zeros(1, 64), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    names = {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}
    assert len(names) == 2
    changed = weight_only_int8(model, names)
    assert sorted(changed) == sorted(names)
    out = tmp_path / "w8.onnx"
    onnx.save(model, str(out))
    assert out.stat().st_size < 0.35 * path.stat().st_size
    int8 = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(int8) == 2
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    ref = net(torch.from_numpy(x)).detach().numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.02, err  # int8 weights: close, but not the float result (the weights did change)
    assert weight_only_int8(model, {"no_such_node"}) == []


def _dynamic(profile, **changes):
    return profile.model_copy(update={"name": "host-onnx-int8-dynamic", "quantization": profile.quantization.model_copy(
        update={"activations": "dynamic", **changes})})


def test_dynamic_activations_quantize_at_run_time_and_verify(onnx_models):
    """activations: dynamic -> MatMulInteger with DynamicQuantizeLinear, no calibrated activation ranges; the
    float-kept log-mel MatMul stays float; the artifact passes the tiny model's gate."""
    runner, state, profile, fp32, int8 = onnx_models
    dyn = _dynamic(profile)
    art = runner.run_stage(state, "quantize_onnx", fp32, dyn.name, dyn, calibration_for(runner, state, dyn))
    assert art.sha256 != int8.sha256 and art.meta["activations"] == "dynamic"
    assert art.meta["calibration"]["samples"] == 0
    ops = art.meta["ops"]
    assert ops.get("MatMulInteger", 0) > 0 and ops.get("DynamicQuantizeLinear", 0) > 0, ops
    assert "QuantizeLinear" not in ops  # no activation range was fixed ahead of time
    assert "/audio/logmel/MatMul" in art.meta["kept_float_nodes"]
    ver = runner.run_stage(state, "verify", art, dyn.name, dyn, deps={"reference": state.reference})
    assert ver.meta["agreement"] >= 0.97, ver.meta["agreement"]
    bad = _dynamic(profile, activation_type="int8")
    with pytest.raises(StageError, match="asymmetric uint8"):
        runner.run_stage(state, "quantize_onnx", fp32, "bad", bad, calibration_for(runner, state, bad))


def test_gemm_rewrite_and_blockwise_matmul_keep_the_function(tmp_path):
    """Gemm -> MatMul (+ Add) is exact; blockwise int8 (MatMulNBits) stays close to float, and a blockwise entry
    that names nothing is an error."""
    import onnxruntime as ort
    import torch

    from pipeline.export.onnx import _blockwise, gemm_to_matmul

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(), torch.nn.Linear(384, 16)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, torch.zeros(4, 256), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                      dynamo=False)
    model = onnx.load(str(path))
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and sorted(gemm_to_matmul(model)) == sorted(gemms)
    assert "Gemm" not in {n.op_type for n in model.graph.node}
    x = np.random.default_rng(0).normal(size=(4, 256)).astype(np.float32)
    ref = net(torch.from_numpy(x)).detach().numpy()

    def run(m):
        onnx.save(m, str(tmp_path / "r.onnx"))
        return ort.InferenceSession(str(tmp_path / "r.onnx"), providers=["CPUExecutionProvider"]).run(None,
                                                                                                       {"x": x})[0]

    np.testing.assert_allclose(run(model), ref, rtol=1e-5, atol=1e-5)
    blocked, chosen = _blockwise(model, [gemms[0]])
    assert chosen == [gemms[0]]
    assert [n.op_type for n in blocked.graph.node].count("MatMulNBits") == 1
    got = run(blocked)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < err < 0.02, err
    with pytest.raises(StageError, match="no_such_layer"):
        _blockwise(onnx.load(str(path)), ["no_such_layer"])


def test_profile_verifies_on_the_device_and_profiles_ops(onnx_models):
    """verify_on_device: the int8 file's outputs where the agent ran match the host's for the same samples
    (the local device is the host: bit-identical), the host-side figures are recomputed from the files, and the
    per-op table comes from onnxruntime's profiler."""
    runner, state, profile, _, int8 = onnx_models
    dev = TargetProfile.model_validate({**profile.model_dump(), "verify_on_device": 12,
                                        "benchmark": {"threads": 1, "warmup": 1, "iterations": 5,
                                                      "op_profile_runs": 3}})
    ver = runner.run_stage(state, "verify", int8, "d", dev, deps={"reference": state.reference})
    assert (ver.root / "on_device" / "model" / "inputs.npz").is_file()
    prof = runner.run_stage(state, "profile", int8, "d", dev, deps={"verification": ver})
    rec = prof.meta["on_device_verification"]
    assert rec["samples"] == 12 and rec["bit_identical_to_host"] is True and rec["gate_failures"] == []
    ref = np.load(state.reference.path("eval.logits.npy"))[:12]
    from pipeline.device_check import stack

    host = stack(ver.root / "on_device" / "model" / "host.npz", ["logits"], 12)["logits"]
    assert rec["on_device"]["agreement"] == pytest.approx(float((host.argmax(1) == ref.argmax(1)).mean()))
    step = rec["vs_host"]["logits"]["step"]
    assert step is not None and step > 0  # a dequantized int8 output lies on its grid
    ops = prof.meta["op_profile"]
    assert ops["available"] and ops["runs"] == 3 and any("QLinear" in r["type"] or "Conv" in r["type"]
                                                          for r in ops["top"])
