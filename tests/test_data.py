"""Dataset splits against the IOSpec (fast, numpy only): a field of the wrong layout, rank or length is one
InputSpecError naming the file, the field and the expected vs the stored shape, before any preprocessing."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipeline.data import load_split
from pipeline.errors import InputSpecError
from pipeline.iospec import AudioPreprocessing, ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing

from .conftest import REPO

TINY = REPO / "calibration_data" / "tiny_mm"
# The tiny model's inputs (pipeline/models/tiny.py), written out so that this test needs no torch.
IOSPEC = IOSpec(
    inputs=(
        TensorSpec(name="image", shape=(1, 3, 24, 24), dtype="float32", layout="NCHW", modality="image",
                   source_field="image", preprocessing=ImagePreprocessing(mean=(0.5,) * 3, std=(0.2,) * 3)),
        TensorSpec(name="tokens", shape=(1, 16), dtype="int64", layout="NT", modality="text", source_field="text",
                   preprocessing=TokenizerPreprocessing(vocab_file="vocab.txt", max_length=16)),
        TensorSpec(name="audio", shape=(1, 512), dtype="float32", layout="NS", modality="audio", source_field="audio",
                   preprocessing=AudioPreprocessing(sample_rate_hz=4000, num_samples=512)),
    ),
    outputs=(TensorSpec(name="logits", shape=(1, 4), dtype="float32", layout="NC"),),
)


@pytest.fixture
def data(tmp_path):
    """(dataset dir, calibration fields, rewrite(fields)) over a copy of tiny_mm."""
    root = tmp_path / "data"
    shutil.copytree(TINY, root)
    with np.load(root / "calibration.npz") as npz:
        fields = {k: npz[k] for k in npz.files}

    def rewrite(changed: dict) -> None:
        np.savez(root / "calibration.npz", **changed)

    return root, fields, rewrite


def test_the_tiny_dataset_loads(data):
    root, fields, _ = data
    split = load_split(root, "calibration", IOSPEC)
    assert split.inputs["image"].shape == (400, 3, 24, 24) and len(split.labels) == 400


def _refused(root, *needles):
    with pytest.raises(InputSpecError) as err:
        load_split(root, "calibration", IOSPEC)
    msg = str(err.value)
    assert "\n" not in msg and "calibration.npz" in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_chw_images_are_named_with_the_shape_expected(data):
    root, fields, rewrite = data
    rewrite({**fields, "image": fields["image"].transpose(0, 3, 1, 2).copy()})
    _refused(root, "field 'image' has per-sample shape (3, 24, 24)", "expects (3, 24, 24) (NCHW) made from HWC",
             "[N, 24, 24, 3]", "looks CHW", "transpose(0, 2, 3, 1)")


@pytest.mark.parametrize("image,needle", [
    (np.zeros((400, 32, 32, 3), np.uint8), "per-sample shape (32, 32, 3)"),
    (np.zeros((400, 24, 24), np.uint8), "per-sample shape (24, 24)"),
    (np.zeros((400, 24, 24, 4), np.uint8), "per-sample shape (24, 24, 4)"),
    (np.zeros((), np.uint8), "has a scalar"),
])
def test_images_of_another_size_or_rank(data, image, needle):
    root, fields, rewrite = data
    rewrite({**fields, "image": image})
    msg = _refused(root, needle, "[N, 24, 24, 3]")
    assert "looks CHW" not in msg


@pytest.mark.parametrize("field,value,needle", [
    ("audio", lambda f: f["audio"][:, 0], "one waveform per sample"),
    ("audio", lambda f: f["audio"][:, :, None], "one waveform per sample"),
    ("text", lambda f: f["text"][:, None], "one text per sample"),
])
def test_audio_and_text_of_another_rank(data, field, value, needle):
    root, fields, rewrite = data
    rewrite({**fields, field: value(fields)})
    _refused(root, f"field '{field}'", needle)


@pytest.mark.parametrize("field", ["image", "text", "audio", "label"])
def test_fields_of_different_lengths(data, field):
    """A shorter field was an IndexError (exit 3) or, worse, shifted every sample after the gap."""
    root, fields, rewrite = data
    rewrite({**fields, field: fields[field][:-3]})
    _refused(root, "fields hold different sample counts", f"{field}: 397", "one entry per sample")


@pytest.mark.parametrize("label,needle", [
    (lambda f: f["label"].astype(np.float32), "float32[400]"),
    (lambda f: f["label"][:, None], "int64[400, 1]"),
    (lambda f: f["label"].astype(str), "<U"),
])
def test_labels_are_integer_class_indices(data, label, needle):
    root, fields, rewrite = data
    rewrite({**fields, "label": label(fields)})
    _refused(root, "field 'label' is", needle, "one integer class index per sample")


def test_image_paths_are_one_per_sample(tmp_path):
    spec = TensorSpec(name="image", shape=(1, 3, 8, 8), dtype="float32", layout="NCHW", source_field="image",
                      preprocessing=ImagePreprocessing(mean=(0.0,) * 3, std=(1.0,) * 3))
    io = IOSpec(inputs=(spec,), outputs=(TensorSpec(name="y", shape=(1, 2), dtype="float32"),))
    np.savez(tmp_path / "eval.npz", image=np.array([["a.png"], ["b.png"]]), label=np.array([0, 1]))
    with pytest.raises(InputSpecError, match=r"eval\.npz: field 'image' has per-sample shape \(1,\).*one image path"):
        load_split(tmp_path, "eval", io)
