"""Device-dependent settings resolve from the target's device (declared facts here, so the outcome is the same on
build hosts with and without VNNI), are recorded with their reason, and reach the runtimes."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load_profile
from pipeline.device_settings import ORT_PRECISE, DeviceMismatch, resolve
from targets.device import declared_facts

from .conftest import REPO

VNNI = declared_facts({"arch": "x86_64", "features": ["avx2", "avx512f", "avx512bw", "avx512_vnni"]}, "local")
AMX = declared_facts({"arch": "x86_64", "features": ["avx2", "avx512f", "amx_int8", "amx_tile"]}, "local")
AVX2 = declared_facts({"arch": "x86_64", "cpu_model": "Haswell", "features": ["sse4_1", "avx2"]}, "ssh")
AVX512 = declared_facts({"arch": "x86_64", "features": ["avx2", "avx512f", "avx512bw"]}, "ssh")
A53 = declared_facts({"arch": "aarch64", "cpu_model": "Cortex-A53", "features": ["asimd"]}, "qemu")
A76 = declared_facts({"arch": "aarch64", "features": ["asimd", "asimddp"]}, "ssh")


def _profile(name: str, **quantization):
    p = load_profile(name, REPO)
    if quantization:
        p = p.model_copy(update={"quantization": p.quantization.model_copy(update=quantization)})
    return p


@pytest.mark.parametrize("facts, expected", [(VNNI, "disable"), (AMX, "disable"), (AVX2, "enable"),
                                             (AVX512, "enable"), (A53, "disable"), (A76, "disable")])
def test_openvino_overflow_fix_follows_the_device(facts, expected):
    settings = resolve(_profile("host-openvino-int8"), facts)
    assert settings.profile.quantization.overflow_fix == expected
    [record] = settings.to_json()
    assert record == {"setting": "quantization.overflow_fix", "value": expected, "chosen_by": "device",
                      "reason": record["reason"]}
    assert facts.int8_class in record["reason"] and len(record["reason"].splitlines()) == 1


def test_an_explicit_overflow_fix_is_kept_unless_the_device_cannot_take_it():
    for value in ("first_layer", "enable"):
        settings = resolve(_profile("host-openvino-int8", overflow_fix=value), AVX2)
        assert settings.profile.quantization.overflow_fix == value and settings.resolved[0].chosen_by == "profile"
    assert resolve(_profile("host-openvino-int8", overflow_fix="disable"), VNNI).resolved[0].chosen_by == "profile"
    with pytest.raises(DeviceMismatch, match=r"overflow_fix 'disable' .* x86_64 Haswell \(int8 avx2\)"):
        resolve(_profile("host-openvino-int8", overflow_fix="disable"), AVX2)


@pytest.mark.parametrize("facts, option", [(VNNI, None), (AMX, None), (AVX2, "1"), (AVX512, "1"), (A53, None)])
def test_onnxruntime_gets_its_precise_int8_mode_where_kernels_can_saturate(facts, option):
    settings = resolve(_profile("host-onnx-int8"), facts)
    assert settings.profile.runtime_options.get(ORT_PRECISE) == option
    assert [r.setting for r in settings.resolved] == ([f"runtime_options.{ORT_PRECISE}"] if option else [])
    # quantization settings (and so the int8 artifact) are the same on every device: only the session differs
    assert settings.profile.quantization == _profile("host-onnx-int8").quantization


def test_a_profile_can_pin_the_option_itself_and_fp32_targets_resolve_nothing():
    pinned = _profile("host-onnx-int8").model_copy(update={"runtime_options": {ORT_PRECISE: "0"}})
    settings = resolve(pinned, AVX2)
    assert settings.profile.runtime_options == {ORT_PRECISE: "0"} and settings.resolved[0].chosen_by == "profile"
    for name in ("host-onnx-fp32", "host-openvino-fp32", "host-tflite-int8"):
        settings = resolve(_profile(name), AVX2)
        assert settings.resolved == [] and settings.profile == _profile(name)


def test_resolving_twice_changes_nothing():
    for name in ("host-openvino-int8", "host-onnx-int8"):
        once = resolve(_profile(name), AVX2).profile
        assert resolve(once, AVX2).profile == once


def test_runtime_options_are_checked_when_the_profile_loads(tmp_path):
    from pipeline.errors import ConfigError

    bad = tmp_path / "t.yaml"
    bad.write_text("name: t\nformat: tflite\nprecision: fp32\nruntime: litert\nruntime_options: {a: '1'}\n")
    with pytest.raises(ConfigError, match="runtime_options apply to onnxruntime and openvino"):
        load_profile(str(bad), tmp_path)
    bad.write_text("name: t\nformat: onnx\nprecision: fp32\nruntime_options: {'a b; rm': '1'}\n")
    with pytest.raises(ConfigError, match="runtime_options key"):
        load_profile(str(bad), tmp_path)


def test_the_option_reaches_onnxruntime_and_the_agent_cli(tmp_path):
    """A session option is applied (onnxruntime refuses unknown values of known keys) and recorded; the agent's
    --option carries it; outputs on this host are those of the default session (the mode changes only AVX2-class
    kernels' arithmetic)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from targets.agent import AgentError, open_model

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = {"x": np.array([[-1, 0, 2, 3]], dtype=np.float32)}
    plain = open_model(str(path), "onnx", 1)
    precise = open_model(str(path), "onnx", 1, {ORT_PRECISE: "1"})
    assert precise.runtime_config["session_config"] == {ORT_PRECISE: "1"}
    assert "session_config" not in plain.runtime_config
    assert np.array_equal(plain.run(feeds)["y"], precise.run(feeds)["y"])
    with pytest.raises(AgentError, match="takes no runtime options"):
        open_model(str(path), "tflite", 1, {"x": "1"})
    from targets.agent import _parse_args

    args = _parse_args(["--model", "m", "--format", "onnx", "--threads", "1", "--golden", "g",
                        "--option", f"{ORT_PRECISE}=1", "--option", "session.y=a=b"])
    assert dict(args.option) == {ORT_PRECISE: "1", "session.y": "a=b"}
    with pytest.raises(AgentError, match="expected KEY=VALUE"):
        _parse_args(["--model", "m", "--format", "onnx", "--threads", "1", "--golden", "g", "--option", "$(x)=1"])
