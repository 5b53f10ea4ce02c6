"""TFLite stages on the tiny model: ONNX -> SavedModel (onnx2tf) -> fp32 / fp16 / full-integer int8 .tflite files,
each loaded and run in the LiteRT interpreter the device agent uses; plus offline, GELU and Flex-op edge cases."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# find_spec, not importorskip: collecting this file must not pay for (or print) a TensorFlow import.
_MISSING = [m for m in ("tensorflow", "onnx2tf", "tf_keras", "ai_edge_litert", "onnxruntime", "torch")
            if importlib.util.find_spec(m) is None]
if _MISSING:
    pytest.skip(f"TFLite branch needs {', '.join(_MISSING)}", allow_module_level=True)

from pipeline.artifact import Artifact, collect_files  # noqa: E402
from pipeline.calibration import CalibrationSet  # noqa: E402
from pipeline.config import load_profile  # noqa: E402
from pipeline.errors import StageError  # noqa: E402
from pipeline.export.tflite import float_ops, inspect_tflite  # noqa: E402
from pipeline.iospec import IOSpec, TensorSpec  # noqa: E402
from pipeline.verify import adapt_sample  # noqa: E402
from targets.agent import open_model  # noqa: E402

from .conftest import calibration_for, run_cli, write_release  # noqa: E402

FP32, INT8 = "host-tflite-fp32", "host-tflite-int8"


def _with_quantization(profile, name: str, **changes):
    return profile.model_copy(update={"name": name,
                                      "quantization": profile.quantization.model_copy(update=changes)})


@pytest.fixture(scope="module")
def tfl(tiny_build):
    """Every TFLite artifact of the tiny model, built once: fp32, fp16, int8 (float I/O) and int8 (int8 I/O)."""
    runner, state = tiny_build
    base = state.plan.base_dir
    fp32 = load_profile(FP32, base)
    int8 = load_profile(INT8, base)
    profiles = {"fp32": fp32, "fp16": fp32.model_copy(update={"name": "host-tflite-fp16", "precision": "fp16"}),
                "int8": int8, "int8_io": _with_quantization(int8, "host-tflite-int8-io", io_dtype="int8")}
    onnx = runner.run_stage(state, "export_onnx", state.torch_model, FP32, fp32)
    saved = runner.run_stage(state, "export_savedmodel", onnx, FP32, fp32)
    arts = {"onnx": onnx, "savedmodel": saved}
    for key in ("fp32", "fp16"):
        arts[key] = runner.run_stage(state, "convert_tflite", saved, profiles[key].name, profiles[key])
    for key in ("int8", "int8_io"):
        arts[key] = runner.run_stage(state, "quantize_tflite", saved, profiles[key].name, profiles[key],
                                     calibration_for(runner, state, profiles[key]))
    return SimpleNamespace(runner=runner, state=state, profiles=profiles, arts=arts)


def _eval_feeds(state, art, i: int = 0) -> dict:
    return adapt_sample(state.dataset.split("eval").sample(i), art)


def test_savedmodel_keeps_onnx_names_and_takes_nhwc_images(tfl):
    saved, iospec = tfl.arts["savedmodel"], tfl.state.iospec
    signature = saved.meta["signature"]
    assert sorted(signature["inputs"]) == sorted(iospec.input_names) and list(signature["outputs"]) == ["logits"]
    assert signature["inputs"]["tokens"] == {"shape": [1, 16], "dtype": "int64"}  # token ids stay integer
    assert signature["inputs"]["image"]["shape"] == [1, 24, 24, 3]
    assert saved.meta["input_layouts"] == {"image": {"perm": [0, 2, 3, 1], "layout": "NHWC", "shape": [1, 24, 24, 3],
                                                     "dtype": "float32"}}
    assert "saved_model/saved_model.pb" in saved.files and "model.onnx" in saved.files
    assert not any(name.startswith("onnx2tf_scratch") for name in saved.files)  # onnx2tf's cwd is cleaned up


@pytest.mark.parametrize("key", ["fp32", "fp16", "int8", "int8_io"])
def test_every_tflite_file_loads_and_runs(tfl, key):
    art = tfl.arts[key]
    assert set(art.files) == {"model.tflite"}  # the bundle ships the artifact directory as it is
    assert not [op for op in art.meta["ops"] if op.startswith("Flex")]
    session = open_model(str(art.main_file), "tflite", 1)
    assert sorted(session.input_names) == sorted(tfl.state.iospec.input_names)
    out = session.run(_eval_feeds(tfl.state, art))["logits"]
    assert out.shape == (1, 4) and out.dtype == np.float32 and np.isfinite(out).all()


def test_fp32_matches_onnx(tfl):
    import onnxruntime as ort

    onnx = ort.InferenceSession(str(tfl.arts["onnx"].main_file), providers=["CPUExecutionProvider"])
    art = tfl.arts["fp32"]
    session = open_model(str(art.main_file), "tflite", 1)
    split = tfl.state.dataset.split("eval")
    worst = 0.0
    for i in range(0, len(split), 20):
        want = onnx.run(["logits"], split.sample(i))[0]
        got = session.run(_eval_feeds(tfl.state, art, i))["logits"]
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst < 1e-4, worst


def test_fp16_halves_the_file_and_stores_fp16_weights(tfl):
    fp32, fp16 = tfl.arts["fp32"].meta, tfl.arts["fp16"].meta
    assert 0.4 < fp16["size_bytes"] / fp32["size_bytes"] < 0.6
    assert "float16" in fp16["weights_dtypes"] and "float32" not in fp16["weights_dtypes"]
    assert fp16["weights_dtypes"]["float16"]["bytes"] * 2 == fp32["weights_dtypes"]["float32"]["bytes"]


def test_int8_is_full_integer_except_the_declared_front_end(tfl):
    art, fp32 = tfl.arts["int8"], tfl.arts["fp32"]
    data = art.main_file.read_bytes()
    graph = inspect_tflite(data)
    # int8 weights (conv/FC kernels) AND int8 activations flowing between those ops
    for op in graph["ops"]:
        if op["op"] in ("CONV_2D", "FULLY_CONNECTED"):
            kinds = [graph["tensors"][t]["dtype"] for t in (op["inputs"][0], op["inputs"][1], op["outputs"][0])]
            assert kinds == ["int8", "int8", "int8"], op
    assert art.meta["activation_dtypes"]["int8"] > art.meta["activation_dtypes"].get("float32", 0)
    # Only what keep_float declared runs in float: the log-mel power/mel/log ops (and their layout copies).
    assert art.meta["kept_float_nodes"] and all(n.startswith("/audio/logmel/") for n in art.meta["kept_float_nodes"])
    assert {op["op"] for op in float_ops(graph)} <= {"MUL", "ADD", "BATCH_MATMUL", "LOG", "TRANSPOSE", "RESHAPE"}
    assert float_ops(graph) == art.meta["kept_float_ops"]
    # int8 weights are a quarter of the fp32 ones (the float mel filterbank aside); per-channel scales, int32
    # biases and tensor names weigh more in a 230 kB model than they will in a real one.
    fp32_weight_bytes = fp32.meta["weights_dtypes"]["float32"]["bytes"]
    assert art.meta["weights_dtypes"]["int8"]["bytes"] <= 0.26 * fp32_weight_bytes
    assert art.meta["weights_dtypes"].get("float32", {"bytes": 0})["bytes"] <= 0.03 * fp32_weight_bytes
    assert art.meta["size_bytes"] <= 0.40 * fp32.meta["size_bytes"]
    assert art.meta["io_quantization"] == {} and art.meta["calibration"] == {"method": "minmax", "samples": 256}


def test_int8_io_records_scale_and_zero_point(tfl):
    art = tfl.arts["int8_io"]
    io_quant = art.meta["io_quantization"]
    assert set(io_quant) == {"image", "audio", "logits"}  # token ids stay int64
    for entry in io_quant.values():
        assert entry["dtype"] == "int8" and entry["scale"] > 0 and -128 <= entry["zero_point"] <= 127
    details = {d.name: d for d in open_model(str(art.main_file), "tflite", 1).input_details}
    assert details["tokens"].dtype == "int64" and details["image"].dtype == "int8"
    assert details["image"].scale == io_quant["image"]["scale"]
    assert art.meta["input_layouts"]["image"]["dtype"] == "int8" and art.meta["input_layouts"]["audio"]["perm"] is None


@pytest.mark.parametrize("key", ["fp32", "fp16", "int8", "int8_io"])
def test_fidelity_against_torch_via_verify(tfl, key):
    profile = tfl.profiles[key]
    result = tfl.runner.run_stage(tfl.state, "verify", tfl.arts[key], profile.name, profile,
                                  deps={"reference": tfl.state.reference}).meta
    logits = result["outputs"]["logits"]
    print(f"{key}: drop {result['accuracy_drop_pt']:.3f} pt, agreement {result['agreement']:.4f}, "
          f"cosine {logits['cosine_mean']:.6f}, max abs err {logits['max_abs_err']:.3g}")
    if key == "fp32":
        assert result["agreement"] == 1.0 and logits["max_abs_err"] < 1e-4
    elif key == "fp16":
        assert result["agreement"] >= 0.995 and logits["cosine_mean"] > 0.9999
    else:
        assert result["accuracy_drop_pt"] <= 1.0 and result["agreement"] >= 0.97 and logits["cosine_mean"] > 0.999


def test_keep_float_entries_must_match_a_node(tfl):
    profile = _with_quantization(tfl.profiles["int8"], "host-tflite-int8-bad", keep_float=["/no/such/node"])
    with pytest.raises(StageError, match="'/no/such/node' matches no node"):
        tfl.runner.run_stage(tfl.state, "quantize_tflite", tfl.arts["savedmodel"], profile.name, profile,
                             calibration_for(tfl.runner, tfl.state, profile))


def test_settings_tflite_cannot_honour_are_errors(tfl):
    profile = _with_quantization(tfl.profiles["int8"], "host-tflite-int8-u8", activation_type="uint8")
    with pytest.raises(StageError, match="activation_type"):
        tfl.runner.run_stage(tfl.state, "quantize_tflite", tfl.arts["savedmodel"], profile.name, profile,
                             calibration_for(tfl.runner, tfl.state, profile))


# ----------------------------------------------------------------------------- edge cases on hand-made models


class _OneSample:
    def __init__(self, sample: dict):
        self._sample = sample

    def split(self, name):
        return SimpleNamespace(sample=lambda i: {k: v.copy() for k, v in self._sample.items()})


def _state_for(tiny_state, iospec, sample):
    """A BuildState stand-in: the tiny release's config with another model's IOSpec and one eval sample."""
    return SimpleNamespace(plan=tiny_state.plan, iospec=iospec, dataset=_OneSample(sample), records=[])


def _artifact(root: Path, kind: str, main_file: str, meta: dict | None = None) -> Artifact:
    return Artifact(kind=kind, stage="test", component="model", precision="fp32", files=collect_files(root),
                    meta=dict(meta or {}, main_file=main_file), root=root)


def _export_image_net(net, root: Path, classes: int) -> IOSpec:
    """A torch net on 16x16 RGB images -> root/onnx/model.onnx; returns its IOSpec (image -> scores)."""
    import torch

    (root / "onnx").mkdir()
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(root / "onnx" / "model.onnx"), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["scores"])
    return IOSpec(inputs=(TensorSpec(name="image", shape=(1, 3, 16, 16), dtype="float32", layout="NCHW",
                                     modality="image"),),
                  outputs=(TensorSpec(name="scores", shape=(1, classes), dtype="float32", layout="NC"),))


@pytest.fixture(scope="module")
def gelu(tiny_build, tmp_path_factory):
    """An image-only conv + GELU model through export_savedmodel. All inputs are 3-channel images, so onnx2tf would
    download sample photos (there is no network here); GELU's Erf would become FlexErf without the pseudo-op."""
    import torch

    runner, tiny_state = tiny_build
    root = tmp_path_factory.mktemp("gelu")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 2)).eval()
    iospec = _export_image_net(net, root, 2)
    images = np.random.default_rng(0).normal(size=(65, 3, 16, 16)).astype(np.float32)
    state = _state_for(tiny_state, iospec, {"image": images[:1]})
    profile = load_profile(FP32, tiny_state.plan.base_dir)
    saved = runner.run_stage(state, "export_savedmodel", _artifact(root / "onnx", "onnx", "model.onnx"), "gelu",
                             profile)
    calib = CalibrationSet({"image": images[1:]}, iospec, "random images")
    return SimpleNamespace(runner=runner, state=state, saved=saved, calib=calib, onnx=root / "onnx" / "model.onnx",
                           sample={"image": images[:1]}, base=tiny_state.plan.base_dir)


def test_image_only_gelu_model_converts_offline_without_flex_ops(gelu):
    import onnxruntime as ort

    profile = load_profile(FP32, gelu.base)
    art = gelu.runner.run_stage(gelu.state, "convert_tflite", gelu.saved, "gelu", profile)
    assert not [op for op in art.meta["ops"] if op.startswith("Flex")] and "DIV" in art.meta["ops"]  # pseudo-Erf
    want = ort.InferenceSession(str(gelu.onnx)).run(["scores"], gelu.sample)[0]
    got = open_model(str(art.main_file), "tflite", 1).run(adapt_sample(gelu.sample, art))["scores"]
    assert np.abs(got - want).max() < 1e-4


def test_int8_pseudo_erf_fails_at_run_time_unless_kept_float(gelu):
    """The pseudo-Erf computes sign(x) as x / (|x| + eps); int8 DIV refuses a divisor at its zero point."""
    release = gelu.state.plan.release
    gelu.state.plan = SimpleNamespace(base_dir=gelu.base, release=release.model_copy(
        update={"model": release.model.model_copy(update={"keep_float": [], "keep_float_by_format": {}})}))
    int8 = load_profile(INT8, gelu.base)
    bare = _with_quantization(int8, "gelu-int8", keep_float=[])
    with pytest.raises(StageError, match="LiteRT interpreter: .*DIV"):
        gelu.runner.run_stage(gelu.state, "quantize_tflite", gelu.saved, bare.name, bare, gelu.calib)
    kept = _with_quantization(int8, "gelu-int8-erf", keep_float=["Erf"])
    art = gelu.runner.run_stage(gelu.state, "quantize_tflite", gelu.saved, kept.name, kept, gelu.calib)
    assert art.meta["kept_float_nodes"] == ["/1/Erf"] and "DIV" in {op["op"] for op in art.meta["kept_float_ops"]}
    assert {op["op"] for op in float_ops(inspect_tflite(art.main_file.read_bytes()))} >= {"EXP", "DIV"}
    out = open_model(str(art.main_file), "tflite", 1).run(adapt_sample(gelu.sample, art))["scores"]
    assert out.shape == (1, 2) and np.isfinite(out).all()


def test_flex_ops_are_a_stage_error_naming_the_op(tiny_build, tmp_path):
    import tensorflow as tf

    runner, tiny_state = tiny_build

    class Erf(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.math.erf(x)}

    module = Erf()
    tf.saved_model.save(module, str(tmp_path / "sm" / "saved_model"), signatures={"serving_default": module.serve})
    iospec = IOSpec(inputs=(TensorSpec(name="x", shape=(1, 4), dtype="float32"),),
                    outputs=(TensorSpec(name="y", shape=(1, 4), dtype="float32"),))
    signature = {"inputs": {"x": {"shape": [1, 4], "dtype": "float32"}}, "outputs": {"y": {"shape": [1, 4],
                                                                                           "dtype": "float32"}}}
    saved = _artifact(tmp_path / "sm", "savedmodel", "saved_model", {"signature": signature, "input_layouts": {}})
    state = _state_for(tiny_state, iospec, {"x": np.zeros((1, 4), np.float32)})
    profile = load_profile(FP32, tiny_state.plan.base_dir)
    with pytest.raises(StageError, match=r"Flex.*Erf"):
        runner.run_stage(state, "convert_tflite", saved, "flex", profile)
    assert not list((tmp_path / "sm").glob("*.tflite"))


# ----------------------------------------------------------------------------- end to end through the CLI


@pytest.mark.slow
def test_build_publishes_both_tflite_bundles_and_they_verify(tmp_path):
    config = write_release(tmp_path / "release.yaml", release="tflite-e2e", targets=[FP32, INT8])
    proc = run_cli(["build", str(config), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = tmp_path / "dist" / "tflite-e2e"
    index = json.loads((release / "index.json").read_text())
    assert {t["target"]: t["status"] for t in index["targets"]} == {FP32: "passed", INT8: "passed"}
    for target in (FP32, INT8):
        manifest = json.loads((release / target / "manifest.json").read_text())
        assert manifest["model_files"] == ["model.tflite"]
        image = next(t for t in manifest["iospec"]["inputs"] if t["name"] == "image")
        assert image["layout"] == "NHWC" and image["shape"] == [1, 24, 24, 3]
        assert [s["stage"] for s in manifest["model"]["lineage"]][1:3] == ["export_onnx", "export_savedmodel"]
        check = run_cli(["verify", str(release / f"{target}.tar.gz")], tmp_path)
        assert check.returncode == 0 and "golden vectors" in check.stdout, check.stdout + check.stderr
    int8 = json.loads((release / INT8 / "manifest.json").read_text())
    assert int8["verification"]["accuracy_drop_pt"] <= 1.0
    assert int8["quantization"]["kept_float_nodes"]


def test_int8_io_profile_builds_and_firmware_style_int8_feeds_match(tiny_build, tmp_path):
    """host-tflite-int8io end to end: int8 image/audio/logits with scale/zero-point in the manifest; feeding the
    bundle's model integers quantized by hand from those numbers gives what the agent computes from float feeds
    (so the agent quantizes and dequantizes as firmware must), and the golden self-test passes."""
    from targets.agent import _import_tflite

    runner, state = tiny_build  # its cache holds the trained model: no training here
    config = write_release(tmp_path / "release.yaml", release="int8io", targets=["host-tflite-int8io"],
                           profile=False)
    proc = run_cli(["build", str(config), "--no-progress", "--cache-dir", str(runner.cache.root)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bundle = tmp_path / "dist" / "int8io" / "host-tflite-int8io"
    manifest = json.loads((bundle / "manifest.json").read_text())
    specs = {t["name"]: t for t in manifest["iospec"]["inputs"] + manifest["iospec"]["outputs"]}
    for name in ("image", "audio", "logits"):
        q = specs[name]["quantization"]
        assert specs[name]["dtype"] == "int8" and q["dtype"] == "int8" and q["scale"] > 0, specs[name]
    assert specs["tokens"]["dtype"] == "int64" and specs["tokens"]["quantization"] is None
    assert manifest["verification"]["accuracy_drop_pt"] <= 1.0 and manifest["verification"]["agreement"] >= 0.97

    def to_int8(x, q):  # round half away from zero, as TFLite's QUANTIZE does
        scaled = x.astype(np.float64) / q["scale"]
        return np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + q["zero_point"], -128, 127).astype(np.int8)

    interpreter_cls, _, _ = _import_tflite()
    raw = interpreter_cls(model_path=str(bundle / "model.tflite"), num_threads=1)
    raw.allocate_tensors()
    signature = raw.get_signature_runner()
    agent = open_model(str(bundle / "model.tflite"), "tflite", 1)
    split = state.dataset.split("eval")
    for i in (0, 1, 7, 42):
        sample = split.sample(i)
        feeds = {n: v.transpose(specs[n]["transpose_from_source"]) if specs[n].get("transpose_from_source") else v
                 for n, v in sample.items()}
        ints = {n: to_int8(v, specs[n]["quantization"]) if specs[n]["quantization"] else v for n, v in feeds.items()}
        got = signature(**ints)["logits"]
        assert got.dtype == np.int8
        q = specs["logits"]["quantization"]
        by_hand = (got.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"])
        np.testing.assert_array_equal(by_hand, agent.run(feeds)["logits"])
    check = run_cli(["verify", str(bundle)], tmp_path)
    assert check.returncode == 0 and "golden vectors" in check.stdout, check.stdout + check.stderr


def test_weight_only_int8_fc_reads_an_int8_copy_through_dequantize(tmp_path):
    """model.kept_float_weights: int8 on LiteRT: a float FULLY_CONNECTED keeps computing in float on weights that
    the file stores in int8 (DEQUANTIZE), so the file loses ~3/4 of that weight and the outputs barely move."""
    import tensorflow as tf

    from pipeline.export.tflite import weight_only_int8_tflite

    rng = np.random.default_rng(0)
    w = rng.normal(size=(128, 96)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 128], tf.float32)])
    def dense(x):
        return tf.matmul(x, tf.constant(w))

    buf = tf.lite.TFLiteConverter.from_concrete_functions([dense.get_concrete_function()]).convert()
    assert [op["op"] for op in inspect_tflite(buf)["ops"]][:1] == ["FULLY_CONNECTED"]
    out, changed = weight_only_int8_tflite(buf)
    assert len(changed) == 1 and len(out) < len(buf) - 0.7 * w.nbytes
    graph = inspect_tflite(out)
    assert [op["op"] for op in graph["ops"]][:2] == ["DEQUANTIZE", "FULLY_CONNECTED"]
    assert {t["dtype"] for t in graph["tensors"] if t["const"] and t["bytes"] >= w.size} == {"int8"}
    x = rng.normal(size=(8, 128)).astype(np.float32)
    results = []
    for model in (buf, out):
        path = tmp_path / f"m{len(results)}.tflite"
        path.write_bytes(model)
        runner = open_model(str(path), "tflite", 1)  # one input: matched by position
        results.append(np.concatenate([next(iter(runner.run({"x": x[i:i + 1]}).values())) for i in range(len(x))]))
    err = np.abs(results[0] - results[1]).max() / np.abs(results[0]).max()
    assert 0 < err < 0.02, err  # int8 weights: close, not equal
    assert weight_only_int8_tflite(out)[1] == []  # nothing float left to convert


@pytest.fixture(scope="module")
def mlp(tiny_build, tmp_path_factory):
    """A small conv + MLP image model whose weights are big enough for dynamic-range int8 (>= 1024 elements)."""
    import torch

    runner, tiny_state = tiny_build
    root = tmp_path_factory.mktemp("mlp")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 4)).eval()
    iospec = _export_image_net(net, root, 4)
    images = np.random.default_rng(1).normal(size=(40, 3, 16, 16)).astype(np.float32)
    state = _state_for(tiny_state, iospec, {"image": images[:1]})
    release = state.plan.release
    state.plan = SimpleNamespace(base_dir=tiny_state.plan.base_dir, release=release.model_copy(
        update={"model": release.model.model_copy(update={"keep_float": [], "keep_float_by_format": {}})}))
    profile = load_profile(FP32, tiny_state.plan.base_dir)
    saved = runner.run_stage(state, "export_savedmodel", _artifact(root / "onnx", "onnx", "model.onnx"), "mlp",
                             profile)
    fp32 = runner.run_stage(state, "convert_tflite", saved, "mlp", profile)
    return SimpleNamespace(runner=runner, state=state, saved=saved, fp32=fp32, images=images,
                           calib=CalibrationSet({"image": images[1:]}, iospec, "random images"),
                           base=tiny_state.plan.base_dir)


def test_dynamic_range_int8_stores_int8_weights_and_stays_close(mlp, tiny_build):
    """activations: dynamic -> int8 weights, float activations quantized at run time; a quarter of the file and
    close to fp32. With a float-kept layer (the tiny model's log-mel front-end) it refuses, naming the entry."""
    int8 = _with_quantization(load_profile(INT8, mlp.base), "mlp-dynamic", activations="dynamic")
    art = mlp.runner.run_stage(mlp.state, "quantize_tflite", mlp.saved, int8.name, int8, mlp.calib)
    assert art.meta["activations"] == "dynamic" and art.meta["int8_weight_tensors"] >= 2
    assert art.meta["weights_dtypes"]["int8"]["bytes"] > art.meta["weights_dtypes"]["float32"]["bytes"]
    assert art.main_file.stat().st_size < 0.45 * mlp.fp32.main_file.stat().st_size
    fp32_model, int8_model = (open_model(str(a.main_file), "tflite", 1) for a in (mlp.fp32, art))
    for i in range(4):
        feeds = adapt_sample({"image": mlp.images[i:i + 1]}, art)
        want, got = fp32_model.run(feeds)["scores"], int8_model.run(feeds)["scores"]
        err = np.abs(got - want).max() / np.abs(want).max()
        assert 0 < err < 0.05, err
    runner, state = tiny_build
    saved = runner.run_stage(state, "export_savedmodel", runner.run_stage(state, "export_onnx", state.torch_model,
                                                                          FP32, load_profile(FP32, mlp.base)),
                             FP32, load_profile(FP32, mlp.base))
    with pytest.raises(StageError, match="/audio/logmel/.*no per-op exceptions"):
        runner.run_stage(state, "quantize_tflite", saved, int8.name, int8, calibration_for(runner, state, int8))
