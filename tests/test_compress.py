"""Compression methods (issue 5, first slice): low-rank factorization reproduces a layer within the energy its rank
keeps, leaves layers alone where it would not save parameters, and refuses bad settings; magnitude pruning hits its
sparsity, zeros shrink the zipped file, not the dense one."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pipeline.compress.lowrank import apply_lowrank, factorize
from pipeline.compress.prune import magnitude_prune, zipped_size
from pipeline.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1),
                         nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Flatten(), nn.Linear(32 * 4 * 4, 64),
                         nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize("layer", [nn.Linear(96, 80), nn.Conv2d(24, 40, 3, stride=2, padding=1), nn.Conv2d(48, 64, 1)])
def test_factorized_layer_reproduces_the_original_within_the_kept_energy(layer):
    """||W - W_r||_F = sqrt(1 - energy) ||W||_F, and every output vector (per sample, per position) is off by at
    most sigma_{r+1} times the norm of its input vector (patch); full rank is exact."""
    from torch.nn import functional as F

    torch.manual_seed(1)
    conv = isinstance(layer, nn.Conv2d)
    x = torch.randn(2, layer.in_channels, 9, 9) if conv else torch.randn(8, 96)
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    s = torch.linalg.svdvals(w)
    for r in (4, 16, min(w.shape)):
        pair, kept = factorize(layer, r)
        assert kept == pytest.approx(float((s[:r] ** 2).sum() / (s ** 2).sum()))
        w_r = pair[1].weight.detach().reshape(pair[1].weight.shape[0], -1).double() \
            @ pair[0].weight.detach().reshape(r, -1).double()
        rel = float(torch.linalg.norm(w - w_r) / torch.linalg.norm(w))
        assert rel == pytest.approx(math.sqrt(max(0.0, 1 - kept)), abs=1e-5)
        with torch.no_grad():
            err = (pair(x) - layer(x)).double()
        if conv:  # (N, out, H, W) -> per-position vectors; inputs: the patches the kernel sees
            err = err.flatten(2).transpose(1, 2).reshape(-1, err.shape[1])
            inp = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride).double()
            inp = inp.transpose(1, 2).reshape(-1, inp.shape[1])
        else:
            inp = x.double()
        bound = (float(s[r]) if r < len(s) else 0.0) * torch.linalg.norm(inp, dim=1) + 1e-4
        assert bool((torch.linalg.norm(err, dim=1) <= bound).all())


def test_apply_lowrank_by_energy_replaces_only_layers_that_save_parameters():
    net = _net()
    x = torch.randn(4, 3, 8, 8)
    before = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        y0 = net(x)
    report = apply_lowrank(net, energy=0.9)
    by_name = {r["name"]: r for r in report}
    assert "3" not in by_name  # the depthwise conv is never a candidate
    assert by_name["5"]["rank"] is not None and by_name["5"]["params_after"] < by_name["5"]["params_before"]
    assert by_name["0"]["rank"] is None and "would not save" in by_name["0"]["note"]  # 16 x 27: nothing to gain
    assert isinstance(net[5], nn.Sequential) and isinstance(net[0], nn.Conv2d)
    assert sum(p.numel() for p in net.parameters()) < before
    with torch.no_grad():
        y1 = net(x)
    assert y1.shape == y0.shape and torch.isfinite(y1).all()
    kept = [r["energy_kept"] for r in report if r["rank"] is not None]
    assert kept and min(kept) >= 0.9


def test_lowrank_by_param_ratio_and_layer_patterns():
    net = _net()
    report = apply_lowrank(net, param_ratio=0.25, layers=["5", "7"], skip=["7"])
    assert [r["name"] for r in report] == ["5"]
    assert report[0]["params_after"] - 64 <= 0.25 * 512 * 64 + 1  # weights of both factors + the bias


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"), ({"energy": 0.9, "rank": 4}, "exactly one"), ({"energy": 1.5}, r"\(0, 1\]"),
    ({"param_ratio": 1.0}, r"\(0, 1\)"), ({"rank": 0}, ">= 1"), ({"rank": 11, "layers": ["7"]}, "larger than"),
    ({"rank": 2, "layers": ["fc*"]}, "matches no layer"),
])
def test_bad_lowrank_settings_are_config_errors_before_any_change(kwargs, match):
    net = _net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        apply_lowrank(net, **kwargs)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_hits_its_sparsity(scope):
    net = _net()
    report = magnitude_prune(net, 0.6, scope=scope, skip=["0"])
    assert "0" not in {r["name"] for r in report} and bool((net[0].weight != 0).all())
    zeros, total = sum(r["zeros"] for r in report), sum(r["weights"] for r in report)
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    if scope == "layer":
        assert all(r["zeros"] / r["weights"] == pytest.approx(0.6, abs=0.02) for r in report)


def test_pruned_weights_shrink_the_zipped_file_not_the_dense_one(tmp_path):
    net = _net()
    torch.save(net.state_dict(), tmp_path / "dense.pt")
    magnitude_prune(net, 0.8)
    torch.save(net.state_dict(), tmp_path / "pruned.pt")
    dense, pruned = tmp_path / "dense.pt", tmp_path / "pruned.pt"
    assert abs(dense.stat().st_size - pruned.stat().st_size) < 64
    assert zipped_size(pruned) < 0.6 * zipped_size(dense)


@pytest.mark.parametrize("kwargs, match", [({"sparsity": 1.0}, r"\[0, 1\)"), ({"sparsity": -0.1}, r"\[0, 1\)"),
                                           ({"sparsity": 0.5, "scope": "row"}, "scope"),
                                           ({"sparsity": 0.5, "layers": ["nope"]}, "matches no layer")])
def test_bad_pruning_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        magnitude_prune(_net(), **kwargs)


# --------------------------------------------------------------------------- the recipe in a build


@pytest.mark.slow
def test_lowrank_and_pruning_recipe_builds_all_three_formats(tmp_path):
    """A release with a compression recipe: the factorized head layer has rank-r shapes in the ONNX, OpenVINO and
    TFLite files, the manifest declares the steps, and the verification compares with the uncompressed fp32."""
    import numpy as np

    from .conftest import build_release, exported_shapes

    recipe = [{"method": "lowrank", "rank": 8, "layers": ["head.0", "image.features.2.0"]},
              {"method": "prune", "sparsity": 0.3, "skip": ["audio.*"]}]
    release, manifest = build_release(
        tmp_path, "compressed", profile=False, compression=recipe,
        targets=["host-onnx-fp32", "host-onnx-int8", "host-openvino-fp32", "host-tflite-fp32"],
        gates={"max_accuracy_drop_pt": 10.0, "min_agreement": 0.9, "min_cosine": 0.9})
    comp = manifest["compression"]
    assert [s["method"] for s in comp["applied"]] == ["lowrank", "prune"]
    assert comp["parameters"] < comp["parameters_before"] and comp["zero_parameters"] > 0
    assert [s["stage"] for s in manifest["model"]["lineage"]] == ["load", "compress", "export_onnx"]
    shapes = exported_shapes(release)
    inits = shapes["onnx"]
    assert (8, 96) in inits or (96, 8) in inits  # head.0 (64 x 96) became 96 -> 8 -> 64
    assert (64, 96) not in inits and (96, 64) not in inits
    assert (8, 96) in shapes["openvino"] or (96, 8) in shapes["openvino"]
    assert (8, 96) in shapes["tflite"] or (96, 8) in shapes["tflite"]
    ver = manifest["verification"]
    assert ver["reference_accuracy"] > 0.9 and np.isfinite(ver["accuracy_drop_pt"])


def test_a_recipe_that_matches_no_layer_is_a_config_error_before_anything_runs(tmp_path):
    from .conftest import run_cli, write_release

    cfg = write_release(tmp_path / "r.yaml", compression=[{"method": "lowrank", "rank": 4, "layers": ["nope.*"]}])
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path)
    assert proc.returncode == 2 and "matches no layer" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "dist").exists() and "load" not in proc.stdout.split("edgepipe:")[0].split("\n", 1)[-1]
    cfg = write_release(tmp_path / "r2.yaml", compression=[{"method": "prune", "sparsity": 1.0}])
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path)
    assert proc.returncode == 2 and "sparsity" in proc.stderr
    cfg = write_release(tmp_path / "r3.yaml", compression=[{"method": "lowrank", "rank": 65, "layers": ["head.0"]}])
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path)
    assert proc.returncode == 2 and "larger than" in proc.stderr


def test_lowrank_sensitivity_scan_keeps_each_layer_above_the_cosine_floor():
    """min_cosine: each chosen layer, factorized alone at its chosen rank, keeps the model outputs at or above the
    floor on the scan batches; a stricter floor never picks a smaller rank; the report carries the cosine."""
    from pipeline.compress.lowrank import _cosine, _run, scan_ranks
    from pipeline.models.tiny import TinyMultimodalNet, parse_params

    torch.manual_seed(0)
    net = TinyMultimodalNet(parse_params({})).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 24, 24, generator=g), torch.randint(2, 70, (8, 16), generator=g),
                torch.randn(8, 512, generator=g))]
    names = ["head.0", "image.features.1.0", "image.features.2.0", "audio.features.1.0"]
    loose = scan_ranks(net, names, batches, 0.95)  # an untrained model: flat spectra, so a loose floor
    strict = scan_ranks(net, names, batches, 0.999)
    ref = _run(net, batches)
    for n in names:
        r, cos = loose[n]
        assert r is not None and cos >= 0.95
        assert strict[n][0] is None or strict[n][0] >= r
        single = copy.deepcopy(net)
        apply_lowrank(single, rank=r, layers=[n])
        assert _cosine(ref, _run(single, batches)) == pytest.approx(cos, abs=1e-9)
    assert any(strict[n][0] is None or strict[n][0] > loose[n][0] for n in names)
    report = apply_lowrank(net, min_cosine=0.95, layers=names, batches=batches)
    assert {row["name"]: row["rank"] for row in report} == {n: loose[n][0] for n in names}
    assert all(row["scan_cosine"] >= 0.95 for row in report)
