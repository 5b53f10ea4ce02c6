"""Tests for the tiny multimodal reference model and its generated dataset: calibration_data/tiny_mm +
pipeline/models/tiny.py + tools/make_dataset.py -> pass/fail (whole file runs in well under a minute on 2 CPUs)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.data import open_dataset  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from pipeline.models import FactoryContext  # noqa: E402
from pipeline.models.tiny import LABELS, LogMel, TinyMultimodal  # noqa: E402
from pipeline.progress import Progress  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calibration_data" / "tiny_mm"
GENERATED = ("train.npz", "calibration.npz", "eval.npz", "vocab.txt", "labels.txt", "dataset.json")


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_dataset", REPO / "tools" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_dataset = _load_generator()


@pytest.fixture(scope="module")
def factory():
    return TinyMultimodal()


@pytest.fixture(scope="module")
def dataset(factory):
    return open_dataset(DATA, factory.iospec({}))


def _ctx(dataset, seed=0):
    return FactoryContext(dataset=dataset, seed=seed, progress=Progress(enabled=False))


def test_dataset_loads_through_iospec(dataset):
    counts = json.loads((DATA / "dataset.json").read_text())["splits"]
    for name in ("train", "calibration", "eval"):
        split = dataset.split(name)
        n = counts[name]
        assert len(split) == n
        assert split.inputs["image"].shape == (n, 3, 24, 24) and split.inputs["image"].dtype == np.float32
        assert split.inputs["tokens"].shape == (n, 16) and split.inputs["tokens"].dtype == np.int64
        assert split.inputs["audio"].shape == (n, 512) and split.inputs["audio"].dtype == np.float32
        assert split.labels.dtype == np.int64 and set(np.unique(split.labels)) == {0, 1, 2, 3}
        # Every generated word is in vocab.txt as pipeline.data.tokenize splits it: no <unk> (id 1).
        assert not (split.inputs["tokens"] == 1).any()
        assert (split.inputs["tokens"][:, 0] != 0).all()  # no empty note
        assert np.abs(split.inputs["audio"]).max() <= 1.0


def test_raw_fields_have_declared_dtypes():
    with np.load(DATA / "eval.npz", allow_pickle=False) as npz:
        assert npz["image"].dtype == np.uint8 and npz["image"].shape[1:] == (24, 24, 3)
        assert npz["audio"].dtype == np.int16 and npz["audio"].shape[1:] == (512,)
        assert npz["text"].dtype.kind == "U" and npz["label"].dtype == np.int64
        assert max(len(t.split()) for t in npz["text"]) <= 12


def test_regenerating_gives_identical_bytes(tmp_path):
    make_dataset.generate(tmp_path)
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
    assert all((DATA / f).stat().st_size < make_dataset.MAX_NPZ_BYTES for f in GENERATED if f.endswith(".npz"))


def test_factory_constants_match_dataset_files(factory):
    assert tuple((DATA / "labels.txt").read_text().splitlines()) == factory.iospec({}).labels == LABELS
    meta = json.loads((DATA / "dataset.json").read_text())
    image = factory.iospec({}).input("image").preprocessing
    assert list(image.mean) == meta["image_mean"] and list(image.std) == meta["image_std"]
    assert len((DATA / "vocab.txt").read_text().splitlines()) == factory.construct({}).text.embed.num_embeddings


def _best_accuracy_from(bits: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best possible predictor that sees only `bits` (rows of known cue bits): majority per group."""
    keys = bits @ (2 ** np.arange(bits.shape[1]))
    return sum(np.bincount(labels[keys == k]).max() for k in np.unique(keys)) / len(labels)


def test_label_needs_every_modality():
    fields, bits = make_dataset.generate_split(make_dataset.SEED, "train")
    with np.load(DATA / "train.npz", allow_pickle=False) as npz:
        assert np.array_equal(npz["label"], fields["label"])
    cues = np.stack([bits["image_bit"], bits["text_bit"], bits["audio_bit"]], axis=1)
    labels = fields["label"]
    assert _best_accuracy_from(cues, labels) == 1.0
    # Any one or two modalities leave two classes equally likely: at best about 50 %.
    for keep in ([0], [1], [2], [0, 1], [0, 2], [1, 2]):
        assert _best_accuracy_from(cues[:, keep], labels) < 0.6, keep


def test_cue_bits_are_visible_in_the_raw_data():
    """The hidden bits really are in the modalities (so the label rule is learnable, not noise)."""
    fields, bits = make_dataset.generate_split(make_dataset.SEED, "eval")
    restricted = np.array([any(w in make_dataset.RESTRICTED_WORDS for w in t.split()) for t in fields["text"]])
    assert np.array_equal(restricted, bits["text_bit"].astype(bool))
    power = np.abs(np.fft.rfft(fields["audio"].astype(np.float64), axis=1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / make_dataset.SAMPLE_RATE_HZ)
    lo, hi = make_dataset.LOW_BAND_HZ, make_dataset.HIGH_BAND_HZ
    high = power[:, (freqs >= hi[0]) & (freqs <= hi[1])].max(1) > power[:, (freqs >= lo[0]) & (freqs <= lo[1])].max(1)
    assert (high == bits["audio_bit"].astype(bool)).mean() > 0.98
    # A tall object has more left/right edges than top/bottom ones; noise and shading blur this a little.
    img = fields["image"].astype(np.float64)
    tall = np.abs(np.diff(img, axis=2)).sum((1, 2, 3)) > np.abs(np.diff(img, axis=1)).sum((1, 2, 3))
    assert (tall == bits["image_bit"].astype(bool)).mean() > 0.85


def test_logmel_matches_numpy_rfft():
    n_fft, hop = 128, 32
    frontend = LogMel(n_fft, hop, 24, 4000)
    wave = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32) * 0.3
    got = frontend(torch.from_numpy(wave)).detach().numpy()
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([wave[:, s : s + n_fft] * window for s in range(0, 512 - n_fft + 1, hop)], axis=1)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # [B, frames, bins]
    mel_fb = frontend.mel_fb.numpy()
    assert (mel_fb.sum(axis=1) > 0).all()
    want = np.log(np.einsum("mk,bfk->bmf", mel_fb, power) + 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    assert not any(b.requires_grad for b in frontend.buffers()) and not list(frontend.parameters())


@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_forward_shape(factory, dataset, fusion):
    model = factory.construct({"fusion": fusion})
    sample = dataset.split("eval").sample(0)
    with torch.no_grad():
        logits = model(*(torch.from_numpy(sample[n]) for n in factory.iospec({}).input_names))
    assert logits.shape == (1, 4) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the legacy exporter we pick
@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_exports_to_onnx_opset17(factory, dataset, fusion, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = factory.construct({"fusion": fusion})
    names = factory.iospec({}).input_names
    sample = dataset.split("eval").sample(3)
    args = tuple(torch.from_numpy(sample[n]) for n in names)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17, input_names=names,
                      output_names=["logits"])
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, sample)[0]
    with torch.no_grad():
        want = model(*args).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_create_is_deterministic(factory, dataset):
    threads = torch.get_num_threads()
    first = factory.create({"epochs": 1}, _ctx(dataset, seed=0))
    second = factory.create({"epochs": 1}, _ctx(dataset, seed=0))
    other = factory.create({"epochs": 1}, _ctx(dataset, seed=1))
    assert torch.get_num_threads() == threads
    assert not first.training
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters, so the check above is not vacuous
    # construct() + load_state_dict reproduces the trained model (how a cached state dict is reloaded).
    rebuilt = factory.construct({"epochs": 1})
    rebuilt.load_state_dict(a)
    sample = dataset.split("eval").sample(0)
    args = [torch.from_numpy(sample[n]) for n in factory.iospec({}).input_names]
    with torch.no_grad():
        assert torch.equal(rebuilt(*args), first(*args))


@pytest.mark.parametrize("params, key", [({"colour": "red"}, "colour"), ({"fusion": "sum"}, "fusion"),
                                          ({"epochs": 0}, "epochs")])
def test_bad_params_raise_config_error(factory, dataset, params, key):
    for call in (lambda: factory.iospec(params), lambda: factory.construct(params),
                 lambda: factory.create(params, _ctx(dataset))):
        with pytest.raises(ConfigError, match=key) as info:
            call()
        assert "\n" not in str(info.value)


# --- text_tower: transformer (a second variant with MiniLM-like ops: LayerNorm, erf GELU, masked attention) ---------

TRANSFORMER = {"text_tower": "transformer"}


def test_default_text_tower_is_the_pooled_one(factory):
    """The default architecture (hence its init order and trained weights) is the pooled tower, untouched."""
    text_keys = {k for k in factory.construct({}).state_dict() if k.startswith("text.")}
    assert text_keys == {"text.embed.weight", "text.proj.weight", "text.proj.bias"}
    assert factory.construct({}).state_dict().keys() == factory.construct({"text_tower": "pool"}).state_dict().keys()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the legacy exporter we pick
@pytest.mark.parametrize("fusion", ["concat", "attention"])
def test_transformer_variant_exports_to_onnx_opset17(factory, dataset, fusion, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    params = {**TRANSFORMER, "fusion": fusion}
    torch.manual_seed(0)
    model = factory.construct(params)
    names = factory.iospec(params).input_names
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, tuple(torch.from_numpy(dataset.split("eval").sample(0)[n]) for n in names), str(path),
                      dynamo=False, opset_version=17, input_names=names, output_names=["logits"])
    graph = onnx.load(str(path)).graph
    text_ops = {n.op_type for n in graph.node if n.name.startswith("/text/")}
    # Standard ops only; the heads are constant slices, so no batch-size arithmetic (Shape) in the graph.
    assert {"LayerNormalization", "Erf", "Softmax", "MatMul", "Slice"} <= text_ops and "Shape" not in text_ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i in (0, 5, 9):
        sample = dataset.split("eval").sample(i)
        with torch.no_grad():
            want = model(*(torch.from_numpy(sample[n]) for n in names)).numpy()
        np.testing.assert_allclose(session.run(None, sample)[0], want, atol=1e-4)


def _text_embedding(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.text(torch.from_numpy(tokens)).numpy()


def test_transformer_padding_mask_hides_pad_positions(factory, dataset):
    torch.manual_seed(0)
    model = factory.construct(TRANSFORMER)
    tokens = dataset.split("eval").inputs["tokens"][:8].copy()
    pads = tokens == 0
    assert pads.any(axis=1).all() and (~pads).any(axis=1).all()  # every row has real tokens and pads
    assert pads.all(axis=0).any()  # and some position is a pad in every row
    base = _text_embedding(model, tokens)
    # What sits at a pad position (the pad row of the embedding table, the position embedding there) is invisible:
    # pads are masked as keys in every layer and left out of the mean.
    with torch.no_grad():
        model.text.embed.weight[0].normal_(0.0, 5.0)
        model.text.pos[int(np.argmax(pads.all(axis=0)))].normal_(0.0, 5.0)  # a position padded in every row
    np.testing.assert_allclose(_text_embedding(model, tokens), base, atol=1e-6)
    # A real token does matter, and so does turning a pad into a real token (it is no longer masked).
    for row, col in ((0, 0), (0, int(np.argmax(pads[0])))):
        changed = tokens.copy()
        changed[row, col] = 5 if tokens[row, col] != 5 else 6
        moved = np.abs(_text_embedding(model, changed) - base).max(axis=1)
        assert moved[row] > 1e-3 and (moved[1:] < 1e-6).all()


def test_transformer_mask_bias_is_finite(factory):
    """int8 grids and TFLite cannot hold -inf: the mask must be a finite bias (and an all-pad row stays finite)."""
    from pipeline.models.tiny import MASK_BIAS

    assert np.isfinite(MASK_BIAS) and MASK_BIAS <= -1e3
    model = factory.construct(TRANSFORMER)
    assert np.isfinite(_text_embedding(model, np.zeros((1, 16), dtype=np.int64))).all()
    for bad in (float("-inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="text_mask_bias"):
            factory.construct({**TRANSFORMER, "text_mask_bias": bad})


@pytest.mark.parametrize("params, key", [({"text_tower": "transformer", "text_heads": 3}, "text_heads"),
                                          ({"text_layers": 3}, "text_layers"),
                                          ({"text_tower": "lstm"}, "text_tower")])
def test_bad_text_tower_params_raise_config_error(factory, params, key):
    with pytest.raises(ConfigError, match=key) as info:
        factory.construct(params)
    assert "\n" not in str(info.value)
