"""Weight rounding (AdaRound) before int8 quantization: grid values, better layer outputs, kept by onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from pipeline.export.rounding import (GRID_LEVELS, Quadratic, _forward, adaround, adaround_exact,  # noqa: E402
                                      grid_step, layer_inputs, rounding_layers)

from .conftest import REPO, build_release, write_release  # noqa: E402


class _Net(torch.nn.Module):
    """A strided conv, a depthwise conv with asymmetric pads and a linear head: the three layer kinds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, groups=16)
        self.fc = torch.nn.Linear(16 * 5 * 5, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y = self.dw(torch.nn.functional.pad(y, (0, 1, 0, 1)))
        return self.fc(torch.flatten(y, 1))


@pytest.fixture(scope="module")
def small_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("round") / "net.onnx"
    torch.onnx.export(_Net().eval(), torch.zeros(1, 3, 12, 12), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(24)]
    return path, samples


def _rounded(path, samples, iterations=150, objective="sampled"):
    model = onnx.load(str(path))
    layers = rounding_layers(model, set(), None)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    results = {}
    for chunk, arrays in layer_inputs(str(path), layers, samples):
        for layer in chunk:
            w = inits[layer["weight"]].astype(np.float32)
            x = arrays[layer["input"]]
            if objective == "exact":
                results[layer["name"]] = (layer, w, *adaround_exact(layer, w, Quadratic(layer, w.shape, x), iterations))
            else:
                results[layer["name"]] = (layer, w, *adaround(layer, w, x, iterations, 8, 0, 0))
    return results


@pytest.mark.parametrize("layer", [
    dict(op="conv", stride=(2, 1), dilation=(1, 2), groups=1, pads=(1, 2, 0, 1), axis=0),
    dict(op="conv", stride=(1, 1), dilation=(1, 1), groups=6, pads=(1, 1, 1, 1), axis=0),  # depthwise
    dict(op="conv", stride=(1, 1), dilation=(1, 1), groups=2, pads=(0, 0, 0, 0), axis=0),
    dict(op="linear", axis=1), dict(op="linear", axis=0)])
@pytest.mark.parametrize("rows", [3, 40])  # fewer input rows than features (rows kept) and more (Gram matrix)
def test_the_exact_objective_is_the_layers_summed_squared_output(layer, rows):
    rng = np.random.default_rng(1)
    if layer["op"] == "conv":
        x = rng.normal(size=(rows // 3 + 1, 6, 9, 8)).astype(np.float32)
        w_shape = (6, 6 // layer["groups"], 3, 3)
    else:
        x = rng.normal(size=(rows, 1, 12)).astype(np.float32)
        w_shape = (12, 5) if layer["axis"] == 1 else (5, 12)
    dw = torch.from_numpy(rng.normal(size=w_shape).astype(np.float32))
    direct = float(torch.sum(_forward(layer, torch.from_numpy(x), dw) ** 2))
    quad = Quadratic(layer, w_shape, x)
    assert float(quad.sum_sq(dw)) == pytest.approx(direct, rel=1e-4)
    assert quad.count == _forward(layer, torch.from_numpy(x), dw).numel()


@pytest.mark.parametrize("objective", ["exact", "sampled"])
def test_rounded_weights_sit_on_the_int8_grid_and_beat_nearest(small_graph, objective):
    path, samples = small_graph
    results = _rounded(path, samples, iterations=400, objective=objective)
    assert sorted(r[0]["op"] for r in results.values()) == ["conv", "conv", "linear"]
    before = after = 0.0
    for layer, w, new, mse_nearest, mse_learnt in results.values():
        step = grid_step(w, layer["axis"])
        q = new / step
        assert np.allclose(q, np.round(q), atol=1e-3), layer["name"]
        assert np.abs(np.round(q)).max() <= GRID_LEVELS
        # each channel keeps its largest weight, so a toolchain derives the same step
        np.testing.assert_array_equal(grid_step(new, layer["axis"]), step)
        # the learnt rounding moves weights by at most one grid step
        assert np.all(np.abs(new - w) <= step * (1 + 1e-5))
        assert mse_learnt <= mse_nearest
        if w[0].size >= 100:  # a 3x3 conv's 9..27 weights per output leave little to choose (measured: -2..-9 %)
            before += mse_nearest
            after += mse_learnt
    # measured: sampled 0.39 (on its 8-sample probe batch), exact 0.805 (over all 24 samples; the 400-input layer
    # has only 24 input rows, so its optimum is flat: 1000 steps reach 0.115)
    assert after < {"sampled": 0.7, "exact": 0.85}[objective] * before, (before, after)


def test_onnxruntime_quantizer_keeps_the_learnt_rounding(small_graph, tmp_path):
    """Quantizing the re-rounded graph with the host-onnx-int8 settings (per-channel symmetric int8 weights)
    must reproduce the learnt values exactly: the grid the stage targets is onnxruntime's grid."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    path, samples = small_graph
    results = _rounded(path, samples, iterations=400)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        for layer, _, new, *_ in results.values():
            if layer["weight"] == init.name:
                init.CopyFrom(onnx.numpy_helper.from_array(new, init.name))
    src = tmp_path / "rounded.onnx"
    onnx.save(model, str(src))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(samples)

        def get_next(self):
            return next(self.it, None)

    out = tmp_path / "int8.onnx"
    quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"WeightSymmetric": True})
    q = onnx.load(str(out))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.graph.initializer}
    dequantized = []
    for node in q.graph.node:
        if node.op_type == "DequantizeLinear" and inits.get(node.input[0], np.zeros(0)).dtype == np.int8:
            values, scale = inits[node.input[0]].astype(np.float32), inits[node.input[1]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            shape[axis] = -1
            dequantized.append(values * scale.reshape(shape) if scale.ndim else values * scale)
    assert len(dequantized) == 3
    differs = 0
    for layer, w, new, *_ in results.values():
        match = [d for d in dequantized if d.shape == new.shape]
        assert match and np.array_equal(match[0], new) or np.allclose(match[0], new, rtol=1e-6, atol=0), layer["name"]
        step = grid_step(w, layer["axis"])
        differs += int(np.count_nonzero(np.abs(new - np.round(w / step) * step) > step / 2))
    assert differs > 0, "every learnt rounding equals round-to-nearest; the test proves nothing"


def test_keep_float_and_prefix_filters(small_graph):
    path, _ = small_graph
    model = onnx.load(str(path))
    every = [layer["name"] for layer in rounding_layers(model, set(), None)]
    assert len(every) == 3
    assert [layer["name"] for layer in rounding_layers(model, {every[0]}, None)] == every[1:]
    assert rounding_layers(model, set(), ["/no/such/prefix"]) == []


def test_weight_rounding_runs_only_in_int8_chains(tmp_path):
    from pipeline.config import load_release
    from pipeline.plan import make_plan

    cfg, base = load_release(write_release(tmp_path / "r.yaml", model={
        "factory": "pipeline.models.tiny:TinyMultimodal", "dataset": str(REPO / "calibration_data" / "tiny_mm"),
        "weight_rounding": {"iterations": 10}}))
    plan = make_plan(cfg, base)
    for tp in plan.targets:
        if tp.profile.precision == "int8":
            assert tp.chain[:2] == ("export_onnx", "round_weights"), tp.name
        else:
            assert "round_weights" not in tp.chain, tp.name


@pytest.mark.slow
def test_build_with_weight_rounding_records_it_and_passes_gates(tmp_path):
    import yaml

    model = yaml.safe_load((REPO / "examples" / "tiny-mm.yaml").read_text())["model"]
    model["dataset"] = str(REPO / "calibration_data" / "tiny_mm")
    model["weight_rounding"] = {"iterations": 80, "samples": 16}
    model["kept_float_weights"] = "int8"
    root, _ = build_release(tmp_path, "tiny-round", model=model,
                            targets=["host-onnx-fp32", "host-onnx-int8", "host-openvino-int8"])
    for target in ("host-onnx-int8", "host-openvino-int8"):
        manifest = json.loads((root / target / "manifest.json").read_text())
        rounding = manifest["quantization"]["weight_rounding"]
        assert rounding["method"] == "adaround" and rounding["layers"] > 5 and rounding["samples"] == 16
        assert rounding["median_mse_ratio"] < 1.0
        assert "round_weights" in [s["stage"] for s in manifest["model"]["lineage"]]
        ver = manifest["verification"]
        assert ver["accuracy_drop_pt"] <= 1.0 and ver["agreement"] >= 0.97, (target, ver["accuracy_drop_pt"])
    onnx_q = json.loads((root / "host-onnx-int8" / "manifest.json").read_text())["quantization"]
    assert "/audio/logmel/MatMul" in onnx_q["weight_only_int8_nodes"]
    graph = onnx.load(str(root / "host-onnx-int8" / "model.onnx")).graph
    mel = next(n for n in graph.node if n.name == "/audio/logmel/MatMul")
    feeding = {o: n for n in graph.node for o in n.output}
    assert feeding[mel.input[0]].op_type == "DequantizeLinear"  # the float MatMul reads its int8 filterbank
    ov_q = json.loads((root / "host-openvino-int8" / "manifest.json").read_text())["quantization"]
    assert ov_q["kept_float_weights"].startswith("nncf.compress_weights INT8_SYM")
