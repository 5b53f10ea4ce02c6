"""Tests for targets/agent.py: the Python API, the golden-vector format and the CLI (run as a subprocess).

Sections follow the agent's own (core, one per runtime session, golden vectors, measurements, CLI).

Models are built with onnx.helper (no torch). Expected outputs come from numpy, not from a runtime.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from targets import agent

AGENT = Path(agent.__file__)
W = (np.arange(8, dtype=np.float32).reshape(4, 2) - 3.0) / 10.0
B = np.array([0.5, -0.25], dtype=np.float32)


def _build_onnx(path: Path) -> Path:
    """x float32 [1,4] -> y = x @ W + b [1,2]; ids int64 [1,3] -> s = sum(float(ids)) [1,1]."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["ids_f", "axes"], ["s"], keepdims=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every runtime version we target
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _samples(count: int = 3) -> tuple[list, list]:
    rng = np.random.default_rng(0)
    feeds, expected = [], []
    for _ in range(count):
        x = rng.standard_normal((1, 4)).astype(np.float32)
        ids = rng.integers(0, 100, size=(1, 3), dtype=np.int64)
        feeds.append({"x": x, "ids": ids})
        expected.append({"y": (x @ W + B).astype(np.float32), "s": ids.sum(axis=1, keepdims=True).astype(np.float32)})
    return feeds, expected


@pytest.fixture()
def model(tmp_path) -> Path:
    return _build_onnx(tmp_path / "tiny.onnx")


@pytest.fixture()
def golden(tmp_path) -> Path:
    feeds, expected = _samples()
    return agent.write_golden(tmp_path / "golden", feeds, expected, atol=1e-5, rtol=1e-5)


def _cli(*args: str) -> tuple[int, list[str], str]:
    proc = subprocess.run([sys.executable, str(AGENT), *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def _cli_args(model: Path, golden: Path, fmt: str = "onnx") -> list[str]:
    return ["--model", str(model), "--format", fmt, "--threads", "1", "--warmup", "2",
            "--iterations", "15", "--golden", str(golden)]


# ================================================================ core


def test_agent_imports_only_stdlib_numpy_and_runtimes():
    tree = ast.parse(AGENT.read_text(encoding="utf-8"))
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            top_level.add((node.module or "").split(".")[0])
    assert top_level - set(sys.stdlib_module_names) == {"numpy"}
    anywhere = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            anywhere.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            anywhere.add((node.module or "").split(".")[0])
    assert not anywhere & {"pipeline", "targets", "torch"}
    assert anywhere - set(sys.stdlib_module_names) <= {"numpy", "tensorflow"}  # others via importlib


def test_feed_mismatches_raise_agent_error(model):
    session = agent.open_model(str(model), "onnx", 1)
    feeds, _ = _samples(1)
    with pytest.raises(agent.AgentError, match=r"^input 'x': expected \[1, 4\] float32, got \[1, 4\] float64$"):
        session.run({**feeds[0], "x": feeds[0]["x"].astype(np.float64)})
    with pytest.raises(agent.AgentError, match=r"^input 'ids': missing feed"):
        session.run({"x": feeds[0]["x"]})
    with pytest.raises(agent.AgentError, match=r"^feed 'tokens' is not a model input"):
        session.run({**feeds[0], "tokens": feeds[0]["ids"]})


# ================================================================ runtime session: onnx


def test_onnx_session_runs_with_explicit_threads(model):
    feeds, expected = _samples(1)
    session = agent.open_model(str(model), "onnx", 2)
    assert session.runtime_name == "onnxruntime" and session.runtime_config["intra_op_num_threads"] == 2
    assert [(d.name, d.dtype, d.shape) for d in session.input_details] == [("x", "float32", (1, 4)),
                                                                            ("ids", "int64", (1, 3))]
    out = session.run(feeds[0])
    np.testing.assert_allclose(out["y"], expected[0]["y"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out["s"], expected[0]["s"])


# ================================================================ runtime session: openvino


def test_openvino_matches_onnxruntime_with_f32_hint(model, golden):
    pytest.importorskip("openvino")
    feeds, expected = _samples()
    ort_session = agent.open_model(str(model), "onnx", 1)
    ov_session = agent.open_model(str(model), "openvino", 1)
    assert ov_session.input_names == ort_session.input_names == ["x", "ids"]
    for sample, want in zip(feeds, expected):
        ort_out, ov_out = ort_session.run(sample), ov_session.run(sample)
        for name in ("y", "s"):
            np.testing.assert_allclose(ov_out[name], ort_out[name], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(ov_out[name], want[name], rtol=1e-5, atol=1e-5)
    code, lines, stderr = _cli(*_cli_args(model, golden, fmt="openvino"))
    assert code == 0, stderr
    result = json.loads(lines[-1])
    assert result["runtime"] == "openvino"
    assert result["runtime_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert result["runtime_config"]["INFERENCE_NUM_THREADS"] == 1
    assert result["golden"]["passed"] == 3


def test_openvino_ir_and_missing_weights(model, tmp_path):
    ov = pytest.importorskip("openvino")
    xml = tmp_path / "ir" / "tiny.xml"
    ov.save_model(ov.convert_model(str(model)), str(xml), compress_to_fp16=False)
    feeds, expected = _samples(1)
    out = agent.open_model(str(xml), "openvino", 1).run(feeds[0])
    np.testing.assert_allclose(out["y"], expected[0]["y"], rtol=1e-5, atol=1e-5)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(agent.AgentError, match=r"weights file .*tiny\.bin is missing"):
        agent.open_model(str(xml), "openvino", 1)


# ================================================================ runtime session: tflite


def test_match_names_exact_contained_then_position():
    tensors = ["serving_default_input_ids:0", "serving_default_ids:0", "serving_default_image:0"]
    got = agent.match_names(["ids", "input_ids", "image"], tensors, "input", require_all=True)
    assert got == {"ids": "serving_default_ids:0", "input_ids": "serving_default_input_ids:0",
                   "image": "serving_default_image:0"}
    got = agent.match_names(["emb", "logits"], ["StatefulPartitionedCall:0", "StatefulPartitionedCall:1"],
                            "output", require_all=False)
    assert got == {"emb": "StatefulPartitionedCall:0", "logits": "StatefulPartitionedCall:1"}
    with pytest.raises(agent.AgentError, match="'serving_default_image:0': missing feed"):
        agent.match_names(["ids", "input_ids"], tensors, "input", require_all=True)


class _FakeInterpreter:
    """Stands in for a LiteRT interpreter: int8 image input, int32 ids input, int8 output = image + sum(ids)."""

    IMAGE = dict(name="serving_default_image:0", index=0, shape=np.array([1, 4]), shape_signature=np.array([1, 4]),
                 dtype=np.int8, quantization=(0.5, -1))
    IDS = dict(name="serving_default_ids:0", index=1, shape=np.array([1, 3]), shape_signature=np.array([1, 3]),
               dtype=np.int32, quantization=(0.0, 0))
    OUT = dict(name="StatefulPartitionedCall:0", index=2, shape=np.array([1, 4]), shape_signature=np.array([1, 4]),
               dtype=np.int8, quantization=(0.25, 2))

    def __init__(self, model_path, num_threads):
        self.tensors = {}
        self.num_threads = num_threads

    def allocate_tensors(self):
        pass

    def get_input_details(self):
        return [dict(self.IMAGE), dict(self.IDS)]

    def get_output_details(self):
        return [dict(self.OUT)]

    def get_signature_list(self):
        return {}

    def set_tensor(self, index, value):
        expected = {0: np.int8, 1: np.int32}[index]
        assert value.dtype == expected
        self.tensors[index] = value.copy()

    def invoke(self):
        image = (self.tensors[0].astype(np.float32) + 1) * 0.5
        real = image + self.tensors[1].sum()
        self.tensors[2] = np.clip(np.round(real / 0.25) + 2, -128, 127).astype(np.int8)

    def get_tensor(self, index):
        return self.tensors[index]


def test_tflite_session_quantizes_and_maps_names(monkeypatch, tmp_path):
    package = types.ModuleType("ai_edge_litert")
    module = types.ModuleType("ai_edge_litert.interpreter")
    module.Interpreter = _FakeInterpreter
    package.interpreter = module
    monkeypatch.setitem(sys.modules, "ai_edge_litert", package)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", module)
    fake_model = tmp_path / "m.tflite"
    fake_model.write_bytes(b"fake")
    session = agent.open_model(str(fake_model), "tflite", 2)
    assert session.runtime_name == "ai_edge_litert"
    assert session.input_details[0].as_dict() == {"name": "serving_default_image:0", "shape": [1, 4],
                                                  "dtype": "int8", "scale": 0.5, "zero_point": -1}
    image = np.array([[0.0, 0.74, -1.3, 200.0]], dtype=np.float32)
    q = agent.quantize(image, 0.5, -1, "int8")
    np.testing.assert_array_equal(q, [[-1, 0, -4, 127]])  # 0.74/0.5 = 1.48 -> 1; -2.6 -> -3; clipped at 127
    out = session.run({"image": image, "ids": np.array([[1, 0, 1]], dtype=np.int64)})
    assert list(out) == ["StatefulPartitionedCall:0"] and out["StatefulPartitionedCall:0"].dtype == np.float32
    np.testing.assert_allclose(out["StatefulPartitionedCall:0"], [[2.0, 2.5, 0.5, 31.25]])
    assert session.map_outputs(["emb"]) == {"emb": "StatefulPartitionedCall:0"}
    with pytest.raises(agent.AgentError, match=r"input 'image' \(tensor 'serving_default_image:0'\): expected"):
        session.run({"image": np.zeros((1, 5), np.float32), "ids": np.zeros((1, 3), np.int64)})
    with pytest.raises(agent.AgentError, match="values do not fit"):
        session.run({"image": image, "ids": np.array([[2**40, 0, 0]], dtype=np.int64)})


def test_tflite_missing_runtime_is_clear(monkeypatch, tmp_path):
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter",
                 "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes the import fail
    fake_model = tmp_path / "m.tflite"
    fake_model.write_bytes(b"fake")
    with pytest.raises(agent.AgentError, match="no TFLite runtime is installed here"):
        agent.open_model(str(fake_model), "tflite", 1)


def test_tflite_real_runtime_end_to_end(tmp_path):
    tf = pytest.importorskip(
        "tensorflow", reason="TensorFlow is not installed here yet: it is needed to build a .tflite test model "
        "(the TFLite export issue brings it); the agent's TFLite logic is covered with a fake interpreter above")
    weights = tf.constant(W)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(x, weights) + B}

    module = Tiny()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(1)
    calibration = [rng.standard_normal((1, 4)).astype(np.float32) for _ in range(64)]
    converter.representative_dataset = lambda: ([c] for c in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    model = tmp_path / "tiny.tflite"
    model.write_bytes(converter.convert())
    feeds = [{"x": c} for c in calibration[:3]]
    expected = [{"y": (f["x"] @ W + B).astype(np.float32)} for f in feeds]
    golden = agent.write_golden(tmp_path / "golden", feeds, expected, atol=0.1, rtol=0.0)
    code, lines, stderr = _cli(*_cli_args(model, golden, fmt="tflite"))
    result = json.loads(lines[-1])
    assert code == 0 and result["ok"], stderr
    assert result["golden"]["passed"] == 3
    assert result["inputs"][0]["dtype"] == "int8" and result["inputs"][0]["scale"] > 0


# ================================================================ golden vectors


def test_write_golden_is_byte_deterministic_and_round_trips(tmp_path):
    feeds, expected = _samples()
    # A Fortran-ordered copy of the same values must not change the bytes.
    fortran = [{k: np.asfortranarray(v) for k, v in s.items()} for s in feeds]
    first = agent.write_golden(tmp_path / "a", feeds, expected, atol=1e-4, rtol=0.0)
    second = agent.write_golden(tmp_path / "b", fortran, expected, atol=1e-4, rtol=0.0)
    files_a = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 1 + 3 * 4
    for rel in files_a:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    again = agent.write_golden(tmp_path / "a", feeds[:1], expected[:1], atol=1e-4, rtol=0.0)  # rewrite in place
    assert not (again / "001").exists()
    loaded = agent.load_golden(first)
    assert loaded.count == 1 and loaded.inputs == ["x", "ids"] and loaded.outputs == ["y", "s"]
    np.testing.assert_array_equal(loaded.samples[0]["ids"], feeds[0]["ids"])
    assert json.loads((first / "golden.json").read_text()) == {
        "count": 1, "inputs": ["x", "ids"], "outputs": ["y", "s"], "atol": 1e-4, "rtol": 0.0}


def test_golden_dir_errors(tmp_path):
    with pytest.raises(agent.AgentError, match="golden vectors not found"):
        agent.load_golden(tmp_path / "nothing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("user data")
    feeds, expected = _samples(1)
    with pytest.raises(agent.AgentError, match="refusing to write"):
        agent.write_golden(tmp_path / "other", feeds, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(agent.AgentError, match="tensor name"):
        agent.write_golden(tmp_path / "g", [{"../x": feeds[0]["x"]}], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(agent.AgentError, match="tensor name"):  # `$` alone matched before the newline
        agent.write_golden(tmp_path / "g", [{"x\n": feeds[0]["x"]}], expected, atol=1e-5, rtol=1e-5)
    good = agent.write_golden(tmp_path / "g2", feeds, expected, atol=1e-5, rtol=1e-5)
    (good / "000" / "output.s.npy").unlink()
    with pytest.raises(agent.AgentError, match="golden file missing"):
        agent.load_golden(good)


def test_check_golden_rejects_broadcastable_shapes(model, tmp_path):
    feeds, expected = _samples(1)
    expected[0]["y"] = expected[0]["y"].reshape(2)  # allclose alone would broadcast [2] against [1, 2]
    golden = agent.load_golden(agent.write_golden(tmp_path / "g", feeds, expected, atol=1e-5, rtol=1e-5))
    report = agent.check_golden(agent.open_model(str(model), "onnx", 1), golden)
    assert report["passed"] == 0 and report["failures"] == ["sample 000 output 'y': shape [1, 2] != expected [2]"]


# ================================================================ measurements


def test_latency_stats_use_linear_percentiles():
    stats = agent.latency_stats([1_000_000 * v for v in range(1, 11)])
    assert stats["p50"] == pytest.approx(5.5) and stats["p90"] == pytest.approx(9.1)
    assert stats["min"] == 1.0 and stats["max"] == 10.0 and stats["std"] == pytest.approx(np.std(np.arange(1, 11)))


# ================================================================ CLI


def test_cli_onnx_reports_golden_and_latency(model, golden):
    code, lines, stderr = _cli(*_cli_args(model, golden))
    assert code == 0, stderr
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["ok"] is True
    assert result["runtime"] == "onnxruntime" and result["format"] == "onnx"
    assert result["golden"]["checked"] == 3 and result["golden"]["passed"] == 3
    assert result["golden"]["failures"] == []
    lat, samples = result["latency_ms"], result["samples_ms"]
    # the summary is computed from the per-run samples it ships with, one per timed run
    assert len(samples) == result["iterations"] and all(s > 0 for s in samples)
    assert lat["p50"] == pytest.approx(float(np.percentile(samples, 50)), abs=2e-6)
    assert lat["min"] == pytest.approx(min(samples), abs=2e-6) and lat["max"] == pytest.approx(max(samples), abs=2e-6)
    assert result["peak_rss_bytes"] > 0 and result["peak_rss_source"] == "VmHWM"
    assert result["runtime_config"]["intra_op_num_threads"] == 1
    assert result["runtime_config"]["inter_op_num_threads"] == 1
    assert result["iterations"] == 15 and result["warmup"] == 2 and result["threads"] == 1
    assert [i["name"] for i in result["inputs"]] == ["x", "ids"]
    assert result["cpu_model"] and result["machine"] and result["python"]


def test_cli_corrupted_golden_exits_3_with_failures(model, tmp_path):
    feeds, expected = _samples()
    expected[1]["y"] = expected[1]["y"] + 1.0
    golden = agent.write_golden(tmp_path / "bad", feeds, expected, atol=1e-5, rtol=1e-5)
    code, lines, _ = _cli(*_cli_args(model, golden))
    assert code == 3
    result = json.loads(lines[-1])
    assert result["ok"] is True
    assert result["golden"]["passed"] == 2 and result["golden"]["checked"] == 3
    assert len(result["golden"]["failures"]) == 1
    assert result["golden"]["failures"][0].startswith("sample 001 output 'y'")
    assert result["golden"]["max_abs_err"] == pytest.approx(1.0, abs=1e-5)


def test_cli_missing_model_is_one_line_error(golden, tmp_path):
    code, lines, _ = _cli(*_cli_args(tmp_path / "absent.onnx", golden))
    assert code == 1
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result == {"ok": False, "error": f"model file not found: {tmp_path / 'absent.onnx'}"}


def test_cli_unreadable_model_and_bad_args(golden, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, lines, _ = _cli(*_cli_args(junk, golden))
    assert code == 1 and len(lines) == 1
    assert json.loads(lines[0])["error"].startswith(f"cannot load onnx model {junk}")
    code, lines, _ = _cli("--model", str(junk), "--format", "pytorch", "--threads", "1", "--golden", str(golden))
    assert code == 1 and "--format" in json.loads(lines[0])["error"]


def test_cli_wrong_feed_shape_names_the_input(model, tmp_path):
    feeds, expected = _samples(1)
    feeds[0]["ids"] = np.zeros((1, 5), dtype=np.int64)
    golden = agent.write_golden(tmp_path / "wrong", feeds, expected, atol=1e-5, rtol=1e-5)
    code, lines, _ = _cli(*_cli_args(model, golden))
    assert code == 1 and len(lines) == 1
    assert json.loads(lines[0])["error"] == "input 'ids': expected [1, 3] int64, got [1, 5] int64"


def test_runtime_chatter_on_stdout_goes_to_stderr(model, golden):
    # Runtimes print banners from C++ (fd 1) or Python; the host must still see one JSON line on stdout.
    wrapper = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(AGENT.parent)!r})\n"
        "import agent\n"
        "real_open = agent.open_model\n"
        "def noisy_open(*args):\n"
        "    os.write(1, b'runtime banner on fd 1\\n')\n"
        "    print('python-level noise')\n"
        "    return real_open(*args)\n"
        "agent.open_model = noisy_open\n"
        "sys.exit(agent.main(sys.argv[1:]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *_cli_args(model, golden)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and json.loads(proc.stdout)["ok"] is True
    assert "runtime banner on fd 1" in proc.stderr and "python-level noise" in proc.stderr


# ================================================================ per-op profile and eval outputs


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_cli_op_profile_names_the_graph_nodes(model, golden, fmt):
    """The runtime's own profiler: every op row names a node of the graph; shares add up to at most 1 and the rows
    are ordered slowest first."""
    code, lines, stderr = _cli(*_cli_args(model, golden, fmt), "--op-profile", "5")
    assert code == 0, stderr
    ops = json.loads(lines[0])["op_profile"]
    assert ops["available"] is True and ops["runs"] == 5 and ops["ops"] >= 1, ops
    assert ("profiler" if fmt == "onnx" else "performance counters") in ops["source"]
    types = " ".join(r["type"] for r in ops["top"])
    assert "MatMul" in types or "FullyConnected" in types or "Gemm" in types, ops["top"]
    ms = [r["ms"] for r in ops["top"]]
    # values are rounded to 6 decimals in the record: compare with that slack
    assert all(a >= b - 1e-6 for a, b in zip(ms, ms[1:])) and sum(r["share"] for r in ops["top"]) <= 1.0 + 1e-4
    assert ops["total_ms"] >= ms[0] - 1e-6 and ms[-1] >= 0


def test_tflite_op_profile_says_why_not():
    session = agent.TfliteSession.__new__(agent.TfliteSession)
    session.runtime_name = "ai_edge_litert"
    record = session.op_profile({}, 3)
    assert record["available"] is False and "benchmark_model" in record["reason"]


def test_cli_eval_outputs_match_a_host_run(model, golden, tmp_path):
    """--eval-inputs: the agent runs each sample and writes its outputs under the golden vectors' names."""
    feeds, _ = _samples(5)
    arrays = {"count": np.asarray(5)}
    for k, f in enumerate(feeds):
        arrays.update({f"{k}:{n}": v for n, v in f.items()})
    np.savez(tmp_path / "in.npz", **arrays)
    out = tmp_path / "out.npz"
    code, lines, stderr = _cli(*_cli_args(model, golden), "--eval-inputs", str(tmp_path / "in.npz"),
                               "--eval-outputs", str(out))
    assert code == 0, stderr
    assert json.loads(lines[0])["eval"]["samples"] == 5
    session = agent.open_model(str(model), "onnx", 1)
    with np.load(out) as data:
        assert sorted(data.files) == sorted(f"{k}:{n}" for k in range(5) for n in ("y", "s"))
        for k, f in enumerate(feeds):
            expected = session.run(f)
            np.testing.assert_array_equal(data[f"{k}:y"], expected["y"])
            np.testing.assert_array_equal(data[f"{k}:s"], expected["s"])


def test_cli_eval_inputs_with_a_bad_key_is_one_line(model, golden, tmp_path):
    np.savez(tmp_path / "in.npz", count=np.asarray(1), **{"7:x": np.zeros((1, 4), np.float32)})
    code, lines, _ = _cli(*_cli_args(model, golden), "--eval-inputs", str(tmp_path / "in.npz"),
                          "--eval-outputs", str(tmp_path / "o.npz"))
    assert code == 1 and "bad key '7:x'" in json.loads(lines[0])["error"]
