"""model.export: components -> one artifact chain per component, verified per component and end to end, in one
bundle; model.export: fused (the default) keeps its cache keys and bundle bytes."""
from __future__ import annotations

import json

import pytest

from .conftest import run_cli, write_release

RELEASE = "tiny-mm"
COMPONENTS = ("image_encoder", "text_encoder", "audio_encoder", "fusion_head")


def test_fused_keys_and_config_hash_are_unchanged(tiny_build):
    """The default path: no 'component' in stage configs and a config hash without model.export, so fused
    cache keys and bundles (manifest.config_hash) are the same as before the field existed (likewise without
    quantization.sensitivity while it is off)."""
    from pipeline.artifact import sha256_json
    from pipeline.bundle import config_hash
    from pipeline.stages import StageContext, get_stage

    runner, state = tiny_build
    release, profile = state.plan.release, state.plan.targets[0].profile
    assert release.model.export == "fused"
    old = sha256_json({"release": {**release.model_dump(mode="json"),
                                   "model": {k: v for k, v in release.model.model_dump(mode="json").items()
                                             if k != "export"}},
                       "target": profile.model_dump(mode="json", exclude={"quantization": {"sensitivity"}})})
    assert config_hash(release, profile) == old
    stage = get_stage("export_onnx")
    ctx = StageContext(release=release, base_dir=state.plan.base_dir, iospec=state.iospec, dataset=state.dataset,
                       progress=runner.progress, target=profile, stage=stage)
    assert stage.config(ctx) == {"onnx": release.export.onnx.model_dump(),
                                 "iospec": state.iospec.model_dump(mode="json")}
    ctx.component = "image_encoder"
    assert stage.config(ctx)["component"] == "image_encoder"


def test_export_both_plans_fused_and_suffixed_components(tmp_path):
    from pipeline.config import load_release
    from pipeline.plan import make_plan

    cfg_path = write_release(tmp_path / "r.yaml", targets=["host-onnx-fp32"])
    import yaml

    data = yaml.safe_load(cfg_path.read_text())
    data["model"]["export"] = "both"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg, base = load_release(cfg_path)
    plan = make_plan(cfg, base)
    assert [(t.name, t.export) for t in plan.targets] == [("host-onnx-fp32", "fused"),
                                                          ("host-onnx-fp32-components", "components")]


@pytest.mark.slow
def test_components_build_bundles_verify_end_to_end(tmp_path):
    import yaml

    targets = ["host-onnx-fp32", "host-onnx-int8", "host-openvino-int8", "host-tflite-int8"]
    cfg_path = write_release(tmp_path / "r.yaml", targets=targets)
    data = yaml.safe_load(cfg_path.read_text())
    data["model"]["export"] = "components"
    cfg_path.write_text(yaml.safe_dump(data))
    proc = run_cli(["build", str(cfg_path), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = tmp_path / "dist" / RELEASE
    index = json.loads((release / "index.json").read_text())
    assert [t["status"] for t in index["targets"]] == ["passed"] * len(targets), index["targets"]
    for target in targets:
        manifest = json.loads((release / target / "manifest.json").read_text())
        parts = manifest["components"]["parts"]
        assert manifest["components"]["order"] == list(COMPONENTS)
        assert all(parts[c]["main_file"].startswith(f"{c}/") and parts[c]["main_file"] in manifest["model_files"]
                   for c in COMPONENTS)
        assert parts["fusion_head"]["feeds_from"]["image_embedding"] == "output:image_encoder.image_embedding"
        assert parts["image_encoder"]["feeds_from"] == {"image": "input:image"}
        ver = manifest["verification"]
        assert ver["accuracy_drop_pt"] <= 1.0 and set(ver["components"]) == set(COMPONENTS)
        lat = manifest["latency"]
        assert lat["latency_ms"]["p50"] == pytest.approx(sum(p["latency"]["latency_ms"]["p50"]
                                                             for p in parts.values()))
        check = run_cli(["verify", str(release / f"{target}.tar.gz")], tmp_path)
        assert check.returncode == 0 and "16/16" in check.stdout, check.stdout + check.stderr
    onnx_manifest = json.loads((release / "host-onnx-int8" / "manifest.json").read_text())
    assert len(onnx_manifest["model_files"]) == 4
    assert onnx_manifest["components"]["parts"]["audio_encoder"]["kept_float_nodes"]


def _components_release(tmp_path, export: str, targets: list[str], keep_float_extra: list[str] = ()):
    import yaml

    cfg_path = write_release(tmp_path / "r.yaml", targets=targets, profile=False)
    data = yaml.safe_load(cfg_path.read_text())
    data["model"]["export"] = export
    data["model"]["keep_float"] += list(keep_float_extra)
    cfg_path.write_text(yaml.safe_dump(data))
    return cfg_path


def test_export_both_publishes_and_verifies_fused_and_components_bundles(tiny_build, tmp_path):
    runner, _ = tiny_build  # its cache holds the trained model: no training here
    cfg = _components_release(tmp_path, "both", ["host-onnx-fp32", "host-onnx-int8"])
    proc = run_cli(["build", str(cfg), "--no-progress", "--cache-dir", str(runner.cache.root)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    release = tmp_path / "dist" / RELEASE
    index = json.loads((release / "index.json").read_text())
    names = ["host-onnx-fp32", "host-onnx-fp32-components", "host-onnx-int8", "host-onnx-int8-components"]
    assert [t["target"] for t in index["targets"]] == names
    assert all(t["status"] == "passed" for t in index["targets"]), index["targets"]
    for name in names:
        manifest = json.loads((release / name / "manifest.json").read_text())
        assert manifest["target"] == name
        if name.endswith("-components"):
            assert manifest["export"] == "components" and manifest["components"]["order"] == list(COMPONENTS)
            assert len(manifest["model_files"]) == len(COMPONENTS)
        else:
            assert "components" not in manifest and manifest["model_files"] == ["model.onnx"]
        assert manifest["verification"]["accuracy_drop_pt"] <= 1.0
        check = run_cli(["verify", str(release / f"{name}.tar.gz")], tmp_path)
        assert check.returncode == 0 and "golden vectors" in check.stdout, check.stdout + check.stderr
    # the components bundle is profiled and verified on its own chain, not a copy of the fused one
    fused = json.loads((release / "host-onnx-int8" / "manifest.json").read_text())
    parts = json.loads((release / "host-onnx-int8-components" / "manifest.json").read_text())
    assert fused["model"]["sha256"] not in {p["sha256"] for p in parts["components"]["parts"].values()}


def test_keep_float_entry_matching_no_component_fails_the_target(tiny_build, tmp_path):
    runner, _ = tiny_build
    cfg = _components_release(tmp_path, "components", ["host-onnx-fp32", "host-onnx-int8"], ["/no/such/node"])
    proc = run_cli(["build", str(cfg), "--no-progress", "--cache-dir", str(runner.cache.root)], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    index = json.loads((tmp_path / "dist" / RELEASE / "index.json").read_text())
    status = {t["target"]: (t["status"], t["reasons"]) for t in index["targets"]}
    assert status["host-onnx-fp32"] == ("passed", [])  # fp32 quantizes nothing: keep_float does not apply
    state, reasons = status["host-onnx-int8"]
    assert state == "failed" and len(reasons) == 1 and "\n" not in reasons[0], reasons
    assert "keep_float entry '/no/such/node'" in reasons[0] and "any component" in reasons[0]


def test_keep_float_check_counts_every_component():
    from pipeline.artifact import Artifact
    from pipeline.config import TargetProfile
    from pipeline.errors import ConfigError
    from pipeline.export import check_keep_float_applied

    def part(applied):
        return {"model": Artifact(kind="onnx", stage="quantize_onnx", component="c", precision="int8", files={},
                                  meta={"keep_float_entries": applied})}

    release = type("R", (), {"model": type("M", (), {"keep_float": ["/audio/logmel/Mul"],
                                                     "keep_float_by_format": {"onnx": ["/text/"]}})()})()
    target = TargetProfile(name="t", format="onnx", precision="int8", quantization={"keep_float": ["Gemm"]})
    check_keep_float_applied(release, target, {"a": part(["/audio/logmel/Mul", "Gemm"]), "b": part(["/text/", "Gemm"])})
    with pytest.raises(ConfigError, match=r"'/text/'.*\(a, b\)"):
        check_keep_float_applied(release, target, {"a": part(["/audio/logmel/Mul", "Gemm"]), "b": part([])})
