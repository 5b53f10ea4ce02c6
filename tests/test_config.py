"""Config validation: release YAML and target profiles are strict, and bad input is one clear line."""
from __future__ import annotations

import json

import pytest

from pipeline.config import DEFAULT_RELEASE, ReleaseConfig, TargetProfile, available_profiles, load_profile, \
    load_release
from pipeline.errors import ConfigError

from .conftest import REPO, write_release


def test_default_release_and_profiles_load():
    cfg, base = load_release(None)
    assert cfg.targets == [f"host-{f}-{p}" for f in ("onnx", "openvino", "tflite") for p in ("fp32", "int8")]
    for name in available_profiles():
        assert load_profile(name, base).name == name


def test_unknown_key_names_path_and_suggests(tmp_path):
    cfg = tmp_path / "r.yaml"
    write_release(cfg)
    text = cfg.read_text().replace("factory:", "factroy:")
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_release(cfg)
    msg = str(err.value)
    assert "model.factroy" in msg and "did you mean 'factory'" in msg
    assert "\n" not in msg


def test_nested_unknown_key_in_profile(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nformat: onnx\nprecision: int8\ncalibration: {metod: minmax}\n")
    with pytest.raises(ConfigError, match=r"calibration\.metod.*did you mean 'method'"):
        load_profile(str(p), tmp_path)


@pytest.mark.parametrize("text,needle", [
    ("release: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("release: ok\n", "model"),
    ("release: 'bad name!'\nmodel: {factory: 'a:b', dataset: x}\ntargets: [host-onnx-fp32]\n", "release"),
    ("release: r\nmodel: {factory: 'nocolon', dataset: x}\ntargets: [host-onnx-fp32]\n", "model.factory"),
    ("release: r\nmodel: {factory: 'a:b', dataset: x}\ntargets: []\n", "targets"),
    ("release: r\nmodel: {factory: 'a:b', dataset: x}\ntargets: [x]\ngolden_count: 0\n", "golden_count"),
])
def test_malformed_release_is_one_line(tmp_path, text, needle):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_release(p)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_release(REPO / "nope.yaml")


def test_unknown_target_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'host-onnx-int8'"):
        load_profile("host-onnx-int9", tmp_path)


def test_profile_out_of_range_values(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nformat: onnx\nprecision: int8\ncalibration: {samples: 0}\n")
    with pytest.raises(ConfigError, match="calibration.samples"):
        load_profile(str(p), tmp_path)
    p.write_text("name: t\nformat: tensorrt\nprecision: int8\n")
    with pytest.raises(ConfigError, match="format"):
        load_profile(str(p), tmp_path)


def test_every_field_is_described():
    def walk(schema, defs, where):
        for name, prop in schema.get("properties", {}).items():
            ref = prop.get("$ref") or next((a.get("$ref") for a in prop.get("anyOf", []) if "$ref" in a), None)
            assert prop.get("description") or ref, f"{where}.{name} has no description"
            if ref:
                walk(defs[ref.split("/")[-1]], defs, f"{where}.{name}")

    for model in (ReleaseConfig, TargetProfile):
        schema = model.model_json_schema()
        walk(schema, schema.get("$defs", {}), model.__name__)


def test_schema_files_are_current():
    from pipeline.config import json_schemas

    for which, schema in json_schemas().items():
        path = REPO / "tools" / "schemas" / f"{which}.schema.json"
        assert json.loads(path.read_text()) == schema, f"run python tools/write_schemas.py ({path} is stale)"


def test_default_release_path_exists():
    assert DEFAULT_RELEASE.is_file()


def test_dynamic_activations_fit_only_onnx_and_tflite():
    from pipeline.config import TargetProfile

    base = {"name": "t", "format": "onnx", "precision": "int8", "runtime": "onnxruntime"}
    ok = TargetProfile.model_validate({**base, "quantization": {"activations": "dynamic", "blockwise": ["/a/"]}})
    assert ok.quantization.stage_settings()["activations"] == "dynamic"
    # at their defaults the two settings stay out of the stage cache keys
    assert "activations" not in TargetProfile.model_validate(base).quantization.stage_settings()
    with pytest.raises(ValueError, match="not available for openvino"):
        TargetProfile.model_validate({**base, "format": "openvino", "runtime": "openvino",
                                      "quantization": {"activations": "dynamic"}})
    with pytest.raises(ValueError, match="blockwise applies to activations: dynamic"):
        TargetProfile.model_validate({**base, "quantization": {"blockwise": ["/a/"]}})
    with pytest.raises(ValueError, match="onnxruntime scheme"):
        TargetProfile.model_validate({**base, "format": "tflite", "runtime": "litert",
                                      "quantization": {"activations": "dynamic", "blockwise": ["/a/"]}})
