"""Tests for per-component export shapes: pipeline/models/components.py + TinyMultimodal.components() -> pass/fail
(chained parts reproduce the fused model in torch and through onnxruntime; the wiring helpers refuse bad chains)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, InputSpecError, ModelFactoryError, StageError
from pipeline.iospec import IOSpec
from pipeline.models.components import Component, chain_of, check_components, embedding_spec, parse_feed, run_chain

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calibration_data" / "tiny_mm"
ORDER = ["image_encoder", "text_encoder", "audio_encoder", "fusion_head"]
VARIANTS = [{"text_tower": t, "fusion": f} for t in ("pool", "transformer") for f in ("concat", "attention")]
SAMPLES = (0, 1, 7, 42)  # a few eval samples, run at batch 1 as a device would


# --- wiring helpers (no torch) ---------------------------------------------------------------------------------

def _toy_chain():
    """a: x -> y = x + 1; b: (y, x) -> z = y * x."""
    order = ["a", "b"]
    feeds = {"a": {"x": "input:x"}, "b": {"y": "output:a.y", "x": "input:x"}}

    def run_fn(name, inputs):
        return {"y": inputs["x"] + 1} if name == "a" else {"z": inputs["y"] * inputs["x"]}

    return order, feeds, run_fn


def test_run_chain_feeds_inputs_and_earlier_outputs():
    order, feeds, run_fn = _toy_chain()
    seen = []
    out = run_chain(order, feeds, lambda n, f: (seen.append((n, sorted(f))), run_fn(n, f))[1],
                    {"x": np.array([2.0, 3.0])})
    assert list(out) == ["a", "b"] and seen == [("a", ["x"]), ("b", ["x", "y"])]
    np.testing.assert_array_equal(out["b"]["z"], [6.0, 12.0])


@pytest.mark.parametrize("feeds, sample, error", [
    ({"a": {"x": "input:x"}, "b": {"y": "output:a.y", "x": "input:x"}}, {}, InputSpecError),
    ({"a": {"x": "input:x"}, "b": {"y": "output:c.y", "x": "input:x"}}, {"x": np.ones(1)}, ModelFactoryError),
    ({"a": {"x": "input:x"}, "b": {"y": "output:a.nope", "x": "input:x"}}, {"x": np.ones(1)}, StageError),
    ({"a": {"x": "x"}, "b": {}}, {"x": np.ones(1)}, ModelFactoryError),
])
def test_run_chain_refuses_bad_wiring(feeds, sample, error):
    order, _, run_fn = _toy_chain()
    with pytest.raises(error) as info:
        run_chain(order, feeds, run_fn, sample)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ref, parsed", [("input:tokens", ("input", None, "tokens")),
                                         ("output:text_encoder.text_embedding",
                                          ("output", "text_encoder", "text_embedding"))])
def test_parse_feed(ref, parsed):
    assert parse_feed(ref) == parsed
    for bad in ("input:", "output:enc", "output:.y", "tokens"):
        with pytest.raises(ModelFactoryError):
            parse_feed(bad)


def test_check_components_refuses_mismatched_wiring():
    x = embedding_spec("x", 4)
    enc = Component(module=None, iospec=IOSpec(inputs=(x,), outputs=(embedding_spec("e", 4),)),
                    feeds_from={"x": "input:x"})
    head_wide = Component(module=None, iospec=IOSpec(inputs=(embedding_spec("e", 8),), outputs=(x,)),
                          feeds_from={"e": "output:enc.e"})
    model = IOSpec(inputs=(x,), outputs=(x,))
    check_components({"enc": enc}, model)
    with pytest.raises(ModelFactoryError, match="float32"):
        check_components({"enc": enc, "head": head_wide}, model)  # shape mismatch on the link
    with pytest.raises(ModelFactoryError, match="earlier"):
        check_components({"head": head_wide, "enc": enc}, model)  # wrong order
    unfed = Component(module=None, iospec=enc.iospec, feeds_from={})
    with pytest.raises(ModelFactoryError, match="feeds_from"):
        check_components({"enc": unfed}, model)


def test_components_module_is_light():
    code = "import sys, pipeline.models.components; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- the tiny model's components -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def factory():
    from pipeline.models.tiny import TinyMultimodal

    return TinyMultimodal()


@pytest.fixture(scope="module")
def eval_split(factory):
    from pipeline.data import open_dataset

    return open_dataset(DATA, factory.iospec({})).split("eval")


@pytest.fixture(scope="module")
def trained(torch, factory):
    """params key -> (params, fused model), each trained once for one epoch (real weights, BN statistics)."""
    from pipeline.data import open_dataset
    from pipeline.models import FactoryContext
    from pipeline.progress import Progress

    cache = {}

    def get(variant):
        key = tuple(sorted(variant.items()))
        if key not in cache:
            params = {**variant, "epochs": 1}
            ctx = FactoryContext(dataset=open_dataset(DATA, factory.iospec(params)), seed=0,
                                 progress=Progress(enabled=False))
            cache[key] = (params, factory.create(params, ctx))
        return cache[key]

    return get


def _fused_logits(torch, model, factory, sample):
    with torch.no_grad():
        return model(*(torch.from_numpy(sample[n]) for n in factory.iospec({}).input_names)).numpy()


def _variant_id(v):
    return f"{v['text_tower']}-{v['fusion']}"


@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_torch_chain_reproduces_fused_logits(torch, factory, trained, eval_split, variant):
    params, model = trained(variant)
    parts = factory.components(params, model)
    assert list(parts) == ORDER
    order, feeds = chain_of(parts)

    def run_fn(name, inputs):
        comp = parts[name]
        with torch.no_grad():
            out = comp.module(*(torch.from_numpy(inputs[n]) for n in comp.iospec.input_names))
        return {comp.iospec.output_names[0]: out.numpy()}

    for i in SAMPLES:
        sample = eval_split.sample(i)
        got = run_chain(order, feeds, run_fn, sample)["fusion_head"]["logits"]
        want = _fused_logits(torch, model, factory, sample)
        assert got.shape == want.shape == (1, 4)
        assert np.abs(got - want).max() < 1e-5


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about the legacy exporter we pick
@pytest.mark.parametrize("variant", VARIANTS, ids=_variant_id)
def test_onnx_chain_reproduces_fused_logits(torch, factory, trained, eval_split, variant, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    params, model = trained(variant)
    parts = factory.components(params, model)
    sessions = {}
    example = eval_split.sample(0)
    for name, comp in parts.items():
        spec = comp.iospec
        args = tuple(torch.zeros(s.shape) if s.name.endswith("_embedding") else torch.from_numpy(example[s.name])
                     for s in spec.inputs)
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(comp.module, args, str(path), dynamo=False, opset_version=17,
                          input_names=spec.input_names, output_names=spec.output_names)
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == spec.input_names and [o.name for o in graph.output] == spec.output_names
        sessions[name] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Node names match the fused model's, so the release's keep_float prefixes still find the log-mel nodes.
    audio_nodes = [n.name for n in onnx.load(str(tmp_path / "audio_encoder.onnx")).graph.node]
    assert any(n.startswith("/audio/logmel/MatMul") for n in audio_nodes)

    def run_fn(name, inputs):
        return dict(zip(parts[name].iospec.output_names, sessions[name].run(None, inputs)))

    order, feeds = chain_of(parts)
    for i in SAMPLES:
        sample = eval_split.sample(i)
        got = run_chain(order, feeds, run_fn, sample)["fusion_head"]["logits"]
        assert np.abs(got - _fused_logits(torch, model, factory, sample)).max() < 1e-4


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[3]], ids=_variant_id)
def test_component_iospecs_use_model_inputs(torch, factory, variant):
    model = factory.construct(variant)
    parts = factory.components(variant, model)
    spec = factory.iospec(variant)
    check_components(parts, spec)
    encoders = {n: c for n, c in parts.items() if n != "fusion_head"}
    # Each model input feeds exactly one encoder, under its own name and with its own preprocessing.
    assert sorted(s.name for c in encoders.values() for s in c.iospec.inputs) == sorted(spec.input_names)
    for name, comp in encoders.items():
        (inp,) = comp.iospec.inputs
        assert inp == spec.input(inp.name) and comp.feeds_from == {inp.name: f"input:{inp.name}"}
        (out,) = comp.iospec.outputs
        assert out.name == name.replace("_encoder", "_embedding") and out.shape == (1, 32) and out.dtype == "float32"
    head = parts["fusion_head"]
    assert head.iospec.input_names == ["image_embedding", "text_embedding", "audio_embedding"]
    assert head.iospec.outputs == spec.outputs and head.iospec.labels == spec.labels
    assert head.feeds_from["text_embedding"] == "output:text_encoder.text_embedding"


def test_components_are_views_on_the_trained_weights(torch, factory):
    model = factory.construct({})
    parts = factory.components({}, model)
    fused = model.state_dict()
    for comp in parts.values():
        for key, tensor in comp.module.state_dict().items():
            assert key in fused and tensor.data_ptr() == fused[key].data_ptr(), key  # same storage, same key
    image = torch.zeros(1, 3, 24, 24)
    with torch.no_grad():
        before = parts["image_encoder"].module(image).clone()
        model.image.proj.bias.add_(1.0)
        assert not torch.equal(parts["image_encoder"].module(image), before)


@pytest.mark.parametrize("params", [{"colour": "red"}, {"text_tower": "rnn"}])
def test_components_with_bad_params_raise_config_error(torch, factory, params):
    with pytest.raises(ConfigError) as info:
        factory.components(params, factory.construct({}))
    assert "\n" not in str(info.value)


def test_components_refuse_a_module_the_params_do_not_describe(torch, factory):
    with pytest.raises(ConfigError, match="text_tower=transformer"):
        factory.components({"text_tower": "transformer"}, factory.construct({}))
    with pytest.raises(ConfigError, match="fusion=attention"):
        factory.components({"fusion": "attention"}, factory.construct({}))
