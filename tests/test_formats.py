"""The format registry (pipeline/formats.py): every record's stages resolve and chain, its suffixes, runtime, agent
session and references agree with the rest of edgepipe, and the places that read it see the same table."""
from __future__ import annotations

import pytest

from pipeline import formats
from pipeline.formats import EXPORT_CHAINS, FORMAT_NAMES, FORMATS, MODEL_SUFFIXES
from pipeline.stages import STAGES, stage_class_info


def test_the_registry_lists_the_three_formats_in_order():
    assert FORMAT_NAMES == ("onnx", "openvino", "tflite")
    assert formats.RUNTIMES == ("onnxruntime", "openvino", "litert")
    assert set(MODEL_SUFFIXES) == {".onnx", ".xml", ".bin", ".tflite"}
    assert all(s.startswith(".") for s in MODEL_SUFFIXES)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_stage_of_a_format_resolves_and_is_registered(name):
    fmt = FORMATS[name]
    for stage, ref in fmt.stages.items():
        assert STAGES[stage] == ref
        cls = formats.resolve(ref)
        assert cls.name == stage and cls.produces in (fmt.artifact_kind, "onnx", *fmt.intermediate_kinds)


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_chain_starts_from_torch_and_ends_in_the_format(name):
    fmt = FORMATS[name]
    assert "fp32" in fmt.chains
    for precision, chain in fmt.chains.items():
        assert all(stage in STAGES for stage in chain), chain
        kind = "torch"
        for stage in chain:
            info = stage_class_info(stage)
            assert kind in info["consumes"], f"{name} {precision}: {stage} does not consume {kind}"
            kind = info["produces"]
        assert kind == fmt.artifact_kind
        assert stage_class_info("verify")["consumes"] == formats.MODEL_KINDS and kind in formats.MODEL_KINDS
        assert EXPORT_CHAINS[(name, precision)] == chain


def test_export_chains_are_the_table_they_replaced():
    assert EXPORT_CHAINS == {
        ("onnx", "fp32"): ("export_onnx",),
        ("onnx", "int8"): ("export_onnx", "quantize_onnx"),
        ("openvino", "fp32"): ("export_onnx", "convert_openvino"),
        ("openvino", "fp16"): ("export_onnx", "convert_openvino"),
        ("openvino", "int8"): ("export_onnx", "convert_openvino", "quantize_openvino"),
        ("tflite", "fp32"): ("export_onnx", "export_savedmodel", "convert_tflite"),
        ("tflite", "fp16"): ("export_onnx", "export_savedmodel", "convert_tflite"),
        ("tflite", "int8"): ("export_onnx", "export_savedmodel", "quantize_tflite"),
    }


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_references_resolve_and_the_load_snippet_names_a_model_file(name):
    fmt = FORMATS[name]
    assert callable(formats.resolve(fmt.keep_float))
    if fmt.int8.default_op_types:
        assert callable(formats.resolve(fmt.int8.default_op_types))
    assert any(f'"model{suffix}"' in fmt.load_snippet for suffix in fmt.suffixes)


def test_the_agent_has_one_session_per_format_and_the_same_names():
    from targets import agent

    assert agent.FORMATS == FORMAT_NAMES
    assert {name: cls.__name__ for name, cls in agent.SESSIONS.items()} == \
        {name: f.agent_session for name, f in FORMATS.items()}


def test_configs_take_their_choices_from_the_registry():
    from pydantic import ValidationError

    from pipeline.config import ModelConfig, TargetProfile, json_schemas
    from pipeline.verify import FORMAT_OF_KIND

    target = json_schemas()["target"]["properties"]
    assert target["format"]["enum"] == list(FORMAT_NAMES) and target["runtime"]["enum"] == list(formats.RUNTIMES)
    assert FORMAT_OF_KIND == {"onnx": "onnx", "openvino": "openvino", "tflite": "tflite"}
    for name, fmt in FORMATS.items():
        TargetProfile(name="t", format=name, precision="fp32", runtime=fmt.runtime)
        other = next(r for r in formats.RUNTIMES if r != fmt.runtime)
        with pytest.raises(ValidationError, match=f"use '{fmt.runtime}'"):
            TargetProfile(name="t", format=name, precision="fp32", runtime=other)
    with pytest.raises(ValidationError):
        ModelConfig(factory="a:b", dataset="d", keep_float_by_format={"pte": ["x"]})
    with pytest.raises(ValidationError, match="NNCF quantizes activations statically"):
        TargetProfile(name="t", format="openvino", runtime="openvino", precision="int8",
                      quantization={"activations": "dynamic"})


def test_the_sensitivity_scheme_follows_each_formats_int8_scheme():
    from pipeline.config import TargetProfile
    from pipeline.sensitivity import quantized_op_types, scheme

    q = {"symmetric_activations": True, "symmetric_weights": False, "activation_type": "uint8",
         "preset": "mixed"}
    got = {name: scheme(TargetProfile(name="t", format=name, runtime=f.runtime, precision="int8", quantization=q))
           for name, f in FORMATS.items()}
    assert got["onnx"] == {"activation_type": "uint8", "symmetric_activations": True, "symmetric_weights": False,
                           "per_channel": True}
    assert got["openvino"]["symmetric_activations"] is False and got["openvino"]["symmetric_weights"] is True
    assert got["tflite"]["activation_type"] == "int8" and got["tflite"]["symmetric_weights"] is True
    assert quantized_op_types(TargetProfile(name="t", format="tflite", runtime="litert", precision="int8")) is None
