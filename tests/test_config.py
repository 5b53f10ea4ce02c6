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


# --------------------------------------------------------------------------- hostile input


def _release_dict(**model) -> dict:
    return {"release": "r", "model": {"factory": "a.b:C", "dataset": "x", **model}, "targets": ["host-onnx-fp32"]}


@pytest.mark.parametrize("where", ["calibration", "release", "weight_rounding"])
@pytest.mark.parametrize("seed,ok", [(-1, False), (0, True), (2**32 - 1, True), (2**32, False)])
def test_seeds_are_non_negative_and_bounded(tmp_path, where, seed, ok):
    """numpy refuses negative seeds (it was an internal error at the calibration draw); every seed field takes
    0 .. 2^32-1, which numpy and torch both accept."""
    if where == "calibration":
        data, model = {"name": "t", "format": "onnx", "precision": "int8", "calibration": {"seed": seed}}, TargetProfile
    elif where == "release":
        data, model = {**_release_dict(), "seed": seed}, ReleaseConfig
    else:
        data, model = _release_dict(weight_rounding={"seed": seed}), ReleaseConfig
    if ok:
        model.model_validate(data)
    else:
        with pytest.raises(ValueError, match="seed"):
            model.model_validate(data)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "86401", "0"])
def test_timeouts_are_finite_and_bounded(tmp_path, value):
    p = tmp_path / "t.yaml"
    p.write_text(f"name: t\nformat: onnx\nprecision: fp32\nbenchmark: {{timeout_s: {value}}}\n")
    with pytest.raises(ConfigError, match=r"benchmark\.timeout_s"):
        load_profile(str(p), tmp_path)
    p.write_text("name: t\nformat: onnx\nprecision: fp32\nbenchmark: {timeout_s: 86400}\n")
    assert load_profile(str(p), tmp_path).benchmark.timeout_s == 86400


def test_no_float_setting_takes_inf_or_nan(tmp_path):
    p = tmp_path / "t.yaml"
    for text in ("gates: {max_accuracy_drop_pt: .inf}", "gates: {min_cosine: .nan}", "calibration: {percentile: .nan}"):
        p.write_text(f"name: t\nformat: onnx\nprecision: int8\n{text}\n")
        with pytest.raises(ConfigError, match="finite number"):
            load_profile(str(p), tmp_path)


@pytest.mark.parametrize("name", ["tiny\n", "tiny\r", "tiny\n\n", " tiny", "tiny ", "ti ny", "\ntiny"])
def test_names_are_checked_whole(tmp_path, name):
    """`$` matches before a trailing newline: "tiny\\n" passed and created dist/tiny\\n/."""
    with pytest.raises(ValueError, match="use 1-64 characters"):
        ReleaseConfig.model_validate({**_release_dict(), "release": name})
    with pytest.raises(ValueError, match="use 1-64 characters"):
        TargetProfile.model_validate({"name": name, "format": "onnx", "precision": "fp32"})
    with pytest.raises(ValueError, match="use 1-64 characters"):
        ReleaseConfig.model_validate({**_release_dict(), "compression_study": {name: [{"method": "prune",
                                                                                         "sparsity": 0.5}]}})


@pytest.mark.parametrize("factory", ["a.b:C\n", "a.b:C ", "a.b\n:C", " a.b:C"])
def test_factory_is_checked_whole(factory):
    with pytest.raises(ValueError, match="package.module:Name"):
        ReleaseConfig.model_validate(_release_dict(factory=factory))


@pytest.mark.parametrize("text,line,first", [
    ("release: a\nrelease: b\n", 2, 1),
    ("model:\n  factory: a:b\n  dataset: x\n  factory: c:d\n", 4, 2),
    ("gates: {min_agreement: 0.9, min_agreement: 0.5}\n", 1, 1),
    ("targets: [host-onnx-fp32]\nmodel: {params: {fusion: concat}, params: {}}\n", 2, 2),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, line, first):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_release(p)
    msg = str(err.value)
    assert f"line {line}:" in msg and "is written twice" in msg and f"first at line {first}" in msg, msg
    assert "\n" not in msg


def test_duplicate_key_in_a_profile_names_it(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: t\nformat: onnx\nprecision: int8\ncalibration:\n  samples: 64\n  samples: 128\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: line 6: key 'samples' is written twice \(first at line 5\)"):
        load_profile(str(p), tmp_path)


def test_merge_keys_may_be_overridden(tmp_path):
    """`<<: *base` then a key of base is an override, not a duplicate."""
    from pipeline.configfile import read_yaml

    p = tmp_path / "x.yaml"
    p.write_text("base: &b {samples: 64, seed: 1}\ncalibration:\n  <<: *b\n  samples: 128\n")
    assert read_yaml(p)["calibration"] == {"samples": 128, "seed": 1}


@pytest.mark.parametrize("path,value", [
    ("quantization.keep_float", ["/a/", ""]),
    ("quantization.keep_float", ["   "]),
    ("quantization.blockwise", [""]),
    ("quantization.op_types", ["\t"]),
    ("ops.denied", [""]),
    ("ops.allowed", [" "]),
])
def test_blank_entries_in_profile_lists(path, value):
    """An empty node-name prefix matches every node: keep_float [''] kept the whole model float under an int8
    label."""
    section, key = path.split(".")
    data = {"name": "t", "format": "onnx", "precision": "int8", section: {key: value}}
    if key == "blockwise":
        data[section]["activations"] = "dynamic"
    with pytest.raises(ValueError, match="empty or blank entry"):
        TargetProfile.model_validate(data)


@pytest.mark.parametrize("model,steps", [
    ({"keep_float": [""]}, None),
    ({"keep_float_by_format": {"tflite": ["Log", ""]}}, None),
    ({"weight_rounding": {"nodes": [" "]}}, None),
    ({}, [{"method": "prune", "sparsity": 0.5, "layers": [""]}]),
    ({}, [{"method": "prune", "sparsity": 0.5, "skip": ["  "]}]),
    ({}, [{"method": "structured", "ratios": {"": 0.5}}]),
])
def test_blank_entries_in_release_lists(model, steps):
    data = _release_dict(**model)
    if steps:
        data["compression"] = steps
    with pytest.raises(ValueError, match="empty or blank entry"):
        ReleaseConfig.model_validate(data)


def test_min_samples_has_a_floor(tmp_path):
    p = tmp_path / "t.yaml"
    for n in (0, 1, 7):
        p.write_text(f"name: t\nformat: onnx\nprecision: int8\ncalibration: {{min_samples: {n}}}\n")
        with pytest.raises(ConfigError, match="calibration.min_samples: Input should be greater than or equal to 8"):
            load_profile(str(p), tmp_path)
    p.write_text("name: t\nformat: onnx\nprecision: int8\ncalibration: {min_samples: 8, samples: 8}\n")
    assert load_profile(str(p), tmp_path).calibration.min_samples == 8


def test_every_shipped_config_still_loads():
    """The stricter rules (seeds, names, blanks, min_samples, timeouts, duplicate keys) keep every config the repo
    ships valid: releases in examples/ and the default, profiles in targets/ and tools/bench_profiles/."""
    for path in [DEFAULT_RELEASE, *sorted((REPO / "examples").glob("*.yaml"))]:
        cfg, base = load_release(path)
        for ref in cfg.targets:
            load_profile(ref, base)
    for path in sorted((REPO / "tools" / "bench_profiles").glob("*.yaml")):
        load_profile(str(path), path.parent)
