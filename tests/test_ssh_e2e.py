"""End to end over SSH: `edgepipe build` of the tiny example with the ssh-loopback target (the device record made
by `edgepipe device setup ssh-loopback` in a private $XDG_CACHE_HOME) -> a bundle whose manifest carries the
board's facts and the latency measured there."""
from __future__ import annotations

import json

import pytest

from .boards import loopback  # noqa: F401
from .conftest import run_cli, write_release

pytestmark = pytest.mark.slow
TARGET = "ssh-loopback-onnx-int8"


def test_build_profiles_on_the_ssh_board(loopback, tmp_path):  # noqa: F811
    cfg = write_release(tmp_path / "r.yaml", release="tiny-ssh", targets=[TARGET])
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path, env={"XDG_CACHE_HOME": str(loopback["cache"])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle = tmp_path / "dist" / "tiny-ssh" / TARGET
    manifest = json.loads((bundle / "manifest.json").read_text())
    device, latency = manifest["device"], manifest["latency"]
    assert device["transport"] == "ssh" and device["emulated"] is False and device["cores"] >= 1
    assert device["arch"] in ("x86_64", "aarch64") and "onnxruntime" in device["runtimes"]
    assert latency["transport"] == "ssh" and latency["device"] == device
    assert latency["golden"]["passed"] == latency["golden"]["checked"] >= 1
    assert len(latency["samples_ms"]) == latency["iterations"] == 200
    assert latency["latency_ms"]["min"] <= latency["latency_ms"]["p50"] <= latency["latency_ms"]["p99"]
    assert "via ssh" in (bundle / "latency.md").read_text()
    on_device = latency["on_device_verification"]
    assert on_device["samples"] == min(200, manifest["verification"]["samples"])
    assert on_device["bit_identical_to_host"] is True and on_device["gate_failures"] == []
    assert latency["op_profile"]["available"] is True and latency["op_profile"]["top"]
