"""Plan checks and the stage registry: kinds fit, extras are named, nothing heavy is imported."""
from __future__ import annotations

import pytest

from pipeline.config import load_release
from pipeline.errors import ConfigError, MissingDependencyError
from pipeline.plan import make_plan

from .conftest import write_release


def test_default_plan():
    cfg, base = load_release(None)
    plan = make_plan(cfg, base)
    assert [t.name for t in plan.targets][:3] == ["host-onnx-fp32", "host-onnx-fp32-components", "host-onnx-int8"]
    assert len(plan.targets) == 12 and cfg.model.export == "both"  # six host profiles, fused + components
    chains = {t.name: t.chain for t in plan.targets}
    # model.weight_rounding: AdaRound before each format's quantizer
    assert chains["host-onnx-int8"] == ("export_onnx", "round_weights", "quantize_onnx")
    assert chains["host-openvino-int8"] == ("export_onnx", "round_weights", "convert_openvino", "quantize_openvino")
    assert chains["host-tflite-int8"] == ("export_onnx", "round_weights", "export_savedmodel", "quantize_tflite")


def test_duplicate_target(tmp_path):
    cfg, base = load_release(write_release(tmp_path / "r.yaml", targets=["host-onnx-fp32", "host-onnx-fp32"]))
    with pytest.raises(ConfigError, match="listed twice"):
        make_plan(cfg, base)


def test_missing_extra_is_named(tmp_path, monkeypatch):
    import pipeline.plan as plan_mod

    monkeypatch.setattr(plan_mod, "missing_imports", lambda names: [n for n in names if n == "onnxruntime"])
    cfg, base = load_release(None)
    with pytest.raises(MissingDependencyError, match=r"onnxruntime.*edgepipe\[onnx\]"):
        make_plan(cfg, base)


def test_calibration_below_minimum(tmp_path):
    (tmp_path / "t.yaml").write_text(
        "name: t\nformat: onnx\nprecision: int8\ncalibration: {samples: 8, min_samples: 32}\n")
    cfg, base = load_release(write_release(tmp_path / "r.yaml", targets=["./t.yaml"]))
    with pytest.raises(ConfigError, match="below"):
        make_plan(cfg, base)


def test_op_violations():
    from pipeline.verify import op_violations

    ops = {"CONV_2D": 3, "FlexErf": 1, "ADD": 2}
    assert op_violations(ops, None, ["Flex*"]) == ["FlexErf"]
    assert op_violations(ops, ["CONV_2D", "ADD"], []) == ["FlexErf"]
    assert op_violations(ops, ["*"], []) == []
    assert op_violations(ops, ["CONV_2D"], ["Flex*"]) == ["FlexErf", "ADD"]


def test_factory_module_is_found_without_running_any_package_code(tmp_path, monkeypatch):
    """importlib.util.find_spec('pkg.sub') imports pkg; plan promises to run nothing, so it walks the path."""
    import sys

    from pipeline.plan import module_findable

    for pkg in ("plan_marked", "plan_marked/inner"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'a').write({pkg!r})\n")
    (tmp_path / "plan_marked" / "inner" / "factory.py").write_text("raise SystemExit('imported')\n")
    (tmp_path / "plan_marked" / "flat.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("plan_marked", "plan_marked.inner", "plan_marked.inner.factory", "plan_marked.flat",
                 "pipeline.models.tiny", "json.decoder"):
        assert module_findable(name), name
    for name in ("plan_marked.nope", "plan_marked.flat.deeper", "plan_marked.inner.nope", "no_such_top.x", "json.nope"):
        assert not module_findable(name), name
    assert not (tmp_path / "RAN").exists()
    assert not any(m.startswith("plan_marked") for m in sys.modules)


def test_factory_submodule_of_a_path_extended_package_is_found(tmp_path, monkeypatch):
    """A package split over two sys.path entries (pkgutil.extend_path in its __init__) finds its submodule in
    either, still without running that __init__."""
    from pipeline.plan import module_findable

    for part, module in (("a", "one"), ("b", "two")):
        (tmp_path / part / "plan_split").mkdir(parents=True)
        (tmp_path / part / "plan_split" / "__init__.py").write_text(
            "from pkgutil import extend_path\n__path__ = extend_path(__path__, __name__)\n")
        (tmp_path / part / "plan_split" / f"{module}.py").write_text("")
        monkeypatch.syspath_prepend(str(tmp_path / part))
    assert module_findable("plan_split.one") and module_findable("plan_split.two")
