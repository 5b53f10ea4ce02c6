"""Tests for the qemu transport (targets/transports/qemu.py) with the real emulator: emulated CPU facts (not the
host's), push/run/pull, the agent profiling tiny int8 ONNX and TFLite models under emulation with per-inference
instruction counts, outputs compared with the host's for the same artifact, timeout kills, and the Haswell
(AVX2, no VNNI) finding: onnxruntime's default int8 kernels saturate there, its precise mode (which the device
settings resolve for such a device) matches the VNNI host.

The session fixture runs `edgepipe device setup qemu-arm64` / `qemu-x86_64` (cached under XDG_CACHE_HOME; cold
about 10-30 s, downloading Debian arm64 packages and aarch64 wheels).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import TransportError
from targets import agent
from targets.device import facts_from_probe
from targets.transport import run_agent

from .qemu_models import build_onnx_int8, build_tflite_int8, inputs, output_step

ITERATIONS, WARMUP = 5, 10


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (Debian package qemu-user; .ci/run installs it)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed (it builds the qemu instruction plugin; .ci/run installs it)")


@pytest.fixture(scope="session")
def arm64_device() -> dict:
    _need("qemu-aarch64")
    from targets.emulator import setup_qemu_arm64

    return setup_qemu_arm64()


@pytest.fixture(scope="session")
def x86_device() -> dict:
    _need("qemu-x86_64")
    from targets.emulator import setup_qemu_x86_64

    return setup_qemu_x86_64()


def _qemu(arch: str, cpu: str, **kw):
    from targets.transports.qemu import QemuTransport

    return QemuTransport(cpu=cpu, arch=arch, **kw)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    """int8 ONNX and TFLite files of the same dense model + golden vectors made by running them on the host."""
    root = tmp_path_factory.mktemp("qemu-models")
    pytest.importorskip("onnxruntime")
    out = {"onnx": build_onnx_int8(root)}
    out["onnx_step"] = output_step(out["onnx"])
    pytest.importorskip("tensorflow", reason="TensorFlow builds the .tflite test model")
    out["tflite"] = build_tflite_int8(root)
    feeds = [{"x": x} for x in inputs(3, seed=5)]
    for fmt in ("onnx", "tflite"):
        session = agent.open_model(str(out[fmt]), fmt, 1)
        # atol = rtol = 0: the emulated device must reproduce the host's outputs bit for bit
        out[f"golden_{fmt}"] = agent.write_golden(root / f"golden-{fmt}", feeds, [session.run(f) for f in feeds],
                                                  atol=0.0, rtol=0.0)
    return out


@pytest.fixture(scope="session")
def a53_probe(arm64_device) -> dict:
    with _qemu("aarch64", "cortex-a53") as t:
        return {"probe": t.probe(), "emulator": t.emulator}


@pytest.fixture(scope="session")
def haswell_probe(x86_device) -> dict:
    with _qemu("x86_64", "Haswell-noTSX") as t:
        return {"probe": t.probe(), "emulator": t.emulator}


# ---------------------------------------------------------------- device facts


def test_a53_probe_reports_the_emulated_cpu_not_the_host(a53_probe):
    probe = a53_probe["probe"]
    facts = facts_from_probe(probe, transport="qemu", emulated=True, emulator=a53_probe["emulator"])
    assert facts.arch == "aarch64" and probe["machine"] == "aarch64"
    assert facts.cpu_model == "Cortex-A53"
    assert facts.features == ("asimd",)  # NEON, and no dot product (asimddp) or i8mm on an A53
    assert facts.int8_class == "neon"
    assert probe["cpu"]["flags_source"].startswith("auxv HWCAP")
    assert "avx" not in probe["cpu"]["flags"]  # nothing of the x86 host leaks through
    assert facts.emulated and facts.emulator.startswith("qemu-") and facts.emulator.endswith(" cortex-a53")
    # the sysroot's runtimes are the versions constraints.txt pins for the host
    from targets.emulator import pinned_versions

    pins = pinned_versions()
    assert facts.runtimes["onnxruntime"] == pins["onnxruntime"]
    assert facts.runtimes["ai_edge_litert"] == pins["ai-edge-litert"]
    assert facts.runtimes["numpy"] == pins["numpy"]


@pytest.mark.parametrize("cpu, dotprod", [("cortex-a72", False), ("cortex-a76", True), ("neoverse-n1", True)])
def test_aarch64_cpu_models_differ_in_dot_product(arm64_device, cpu, dotprod):
    from targets.emulated_cpu import cpu_snippet, parse_cpu_line

    with _qemu("aarch64", cpu, count_instructions=False) as t:
        result = t.run([t.python, "-c", cpu_snippet("aarch64") + "\nprint(open('/proc/cpuinfo').read())"],
                       timeout_s=120)
    cpu_info = parse_cpu_line(result.stdout)
    assert result.returncode == 0, result.stderr[-500:]
    assert ("asimddp" in cpu_info["features"]) is dotprod
    # the guest's /proc/cpuinfo is the one made from the same reading (qemu 7.2 would show the host's x86 file)
    assert "Features\t: " + " ".join(cpu_info["features"]) in result.stdout
    assert "vendor_id" not in result.stdout


def test_haswell_probe_has_avx2_but_no_avx512_or_vnni(haswell_probe):
    probe = haswell_probe["probe"]
    facts = facts_from_probe(probe, transport="qemu", emulated=True, emulator=haswell_probe["emulator"])
    assert facts.arch == "x86_64"
    assert facts.features == ("sse4_1", "avx2")
    assert facts.int8_class == "avx2"
    assert "Haswell" in facts.cpu_model
    assert probe["cpu"]["flags_source"] == "CPUID"


def test_haswell_device_settings_resolve_the_precise_int8_mode(haswell_probe):
    from pipeline.config import load_profile
    from pipeline.device_settings import ORT_PRECISE, resolve

    facts = facts_from_probe(haswell_probe["probe"], transport="qemu", emulated=True,
                             emulator=haswell_probe["emulator"])
    profile = load_profile("qemu-haswell-onnx-int8", Path.cwd())
    assert profile.transport.kind == "qemu" and profile.transport.arch == "x86_64"
    settings = resolve(profile, facts)
    assert settings.profile.runtime_options[ORT_PRECISE] == "1"
    assert any("no VNNI" in r.reason for r in settings.resolved)


# ---------------------------------------------------------------- Transport contract


def test_push_run_pull_in_the_guest(arm64_device, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello emulated world\n")
    with _qemu("aarch64", "cortex-a53", count_instructions=False) as t:
        remote = t.push(src, "data/in.txt")
        code = ("import platform, sys; data = open(sys.argv[1]).read(); "
                "open('out.txt', 'w').write(platform.machine() + ':' + data.upper())")
        result = t.run([t.python, "-c", code, remote], timeout_s=120)
        assert result.returncode == 0, result.stderr[-500:]
        t.pull("out.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "aarch64:HELLO EMULATED WORLD\n"
    assert not t.workdir.exists()


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_timeout_kills_the_emulator_and_its_children(arm64_device):
    # the guest forks a child (another emulated process) and both hang; qemu-user's getpid is the host pid
    code = ("import os, time\nchild = os.fork()\nif child == 0:\n    time.sleep(300)\n"
            "open('pids', 'w').write(f'{os.getpid()} {child}')\ntime.sleep(300)\n")
    with _qemu("aarch64", "cortex-a53", count_instructions=False) as t:
        start = time.monotonic()
        with pytest.raises(TransportError, match="timed out after 4 s"):
            t.run([t.python, "-c", code], timeout_s=4)
        assert time.monotonic() - start < 30
        pids = [int(p) for p in (t.workdir / "pids").read_text().split()]
    deadline = time.monotonic() + 10
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(p) for p in pids), f"left running: {pids}"


def test_missing_sysroot_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 is not installed (Debian package qemu-user)")
    with pytest.raises(TransportError, match=r"not set up here .*edgepipe device setup qemu-arm64") as err:
        _qemu("aarch64", "cortex-a53")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- the agent under emulation


def _profile(t, models, fmt: str, options: tuple = ()) -> dict:
    model = t.push(models[fmt], models[fmt].name)
    golden = t.push(models[f"golden_{fmt}"], "golden")
    args = ["--model", model, "--format", fmt, "--threads", "1", "--warmup", str(WARMUP),
            "--iterations", str(ITERATIONS), "--golden", golden]
    for option in options:
        args += ["--option", option]
    return run_agent(t, args, timeout_s=600, threads=1)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_agent_profiles_int8_on_a53_with_instruction_counts(arm64_device, models, fmt):
    with _qemu("aarch64", "cortex-a53") as t:
        record = _profile(t, models, fmt)
    assert record["machine"] == "aarch64"
    # emulated wall time is never presented as latency
    assert not {"latency_ms", "samples_ms", "load_ms", "peak_rss_bytes", "op_profile"} & set(record)
    assert record["emulated"] is True and record["emulator"].endswith(" cortex-a53")
    assert len(record["emulated_samples_ms"]) == ITERATIONS and record["emulated_wall_ms"]["p50"] > 0
    counts = record["instructions"]
    assert counts["runs"] == ITERATIONS == len(counts["counts"])
    assert counts["min"] <= counts["per_inference"] <= counts["max"]
    assert counts["per_inference"] > 100_000  # a real inference, not just the markers
    assert counts["spread"] < 0.01, counts["counts"]
    # golden vectors made on the host with atol = rtol = 0: the emulated A53 output is bit-identical
    assert record["golden"]["passed"] == record["golden"]["checked"] == 3, record["golden"]["failures"]
    assert record["golden"]["max_abs_err"] == 0.0


@pytest.mark.slow
def test_instruction_counts_repeat_across_processes(arm64_device, models):
    with _qemu("aarch64", "cortex-a53") as t:
        first = _profile(t, models, "tflite")["instructions"]["counts"]
        second = _profile(t, models, "tflite")["instructions"]["counts"]
    assert first == second


# ---------------------------------------------------------------- the Haswell finding


@pytest.mark.slow
def test_haswell_default_int8_saturates_and_the_resolved_mode_matches_the_vnni_host(x86_device, models):
    """Same int8 ONNX file, golden outputs from this VNNI host. On the emulated Haswell (AVX2, no VNNI)
    onnxruntime's default u8s8 kernels saturate 16-bit pair sums; with session.x64quantprecision=1 (what
    pipeline/device_settings.py resolves for such a device) the outputs match the host within one output step."""
    from pipeline.device_settings import ORT_PRECISE

    step = models["onnx_step"]
    with _qemu("x86_64", "Haswell-noTSX") as t:
        default = _profile(t, models, "onnx")
        precise = _profile(t, models, "onnx", options=(f"{ORT_PRECISE}=1",))
    assert default["agent_exit_code"] == 3 and default["golden"]["passed"] < default["golden"]["checked"]
    assert default["golden"]["max_abs_err"] > 3 * step  # measured here: ~20 output steps
    assert precise["agent_exit_code"] == 0
    assert precise["golden"]["max_abs_err"] <= step  # measured here: 0 (bit-identical)
    assert precise["runtime_config"]["session_config"] == {ORT_PRECISE: "1"}
    assert precise["instructions"]["spread"] < 0.01
    assert "latency_ms" not in precise and precise["emulated"] is True


# ---------------------------------------------------------------- records without latency_ms downstream


def _emulated_record(count: int) -> dict:
    return {"ok": True, "runtime": "onnxruntime", "runtime_version": "1.32.0", "threads": 1, "iterations": 5,
            "emulated": True, "emulator": "qemu-7.2.22 cortex-a53", "transport": "qemu",
            "emulated_wall_ms": {"p50": 2.5, "p90": 3.0, "p99": 3.1, "mean": 2.6, "min": 2.4, "max": 3.2, "std": 0.1},
            "instructions": {"per_inference": count, "min": count, "max": count, "spread": 0.0, "runs": 5}}


def test_reports_and_totals_handle_emulated_records():
    from types import SimpleNamespace

    from pipeline.latency_report import latency_md, latency_png, part_row
    from pipeline.report import _emulated_cost
    from pipeline.runner import TargetResult

    rec = _emulated_record(480_000)
    row = part_row("model", rec)
    assert row["emulated"] and row["p50"] is None and row["instructions"] == 480_000
    md = latency_md("qemu-a53-onnx-int8", {"arch": "aarch64", "emulated": True, "emulator": rec["emulator"]},
                    {"model": rec}, None)
    assert "not latencies" in md and "480000" in md
    assert latency_png("t", {"model": rec}) is None  # no per-run latency samples to plot
    assert "480,000 instructions per inference" in _emulated_cost(rec)
    assert "not a latency" in _emulated_cost(rec)
    parts = {"image": {"profile": SimpleNamespace(meta=_emulated_record(100))},
             "text": {"profile": SimpleNamespace(meta=_emulated_record(23))}}
    total = TargetResult(plan=None, components=parts).latency()
    assert "latency_ms" not in total and total["emulated"] is True
    assert total["instructions"]["per_inference"] == 123
    assert total["emulated_wall_ms"]["p50"] == 5.0


def test_cli_device_setup_lists_the_emulators(cli):
    proc = cli("device", "setup", "list")
    assert proc.returncode == 0, proc.stderr
    assert "qemu-arm64" in proc.stdout and "qemu-x86_64" in proc.stdout


def test_setup_is_idempotent_and_content_addressed(arm64_device):
    from targets.emulator import device_dir, recipe_inputs, setup_qemu_arm64

    again = setup_qemu_arm64()
    assert again["path"] == arm64_device["path"] == str(device_dir())
    assert json.loads((Path(again["path"]) / "device.json").read_text())["inputs"] == recipe_inputs()
    assert again["runtimes"]["onnxruntime"] == arm64_device["runtimes"]["onnxruntime"]
    assert Path(again["plugin"]).is_file() and os.access(again["python"], os.R_OK)


def test_qemu_transport_config_is_checked():
    from pydantic import ValidationError

    from pipeline.target_config import QemuTransportConfig

    assert QemuTransportConfig(kind="qemu").arch == "aarch64"
    with pytest.raises(ValidationError, match="sysroot applies to arch aarch64"):
        QemuTransportConfig(kind="qemu", arch="x86_64", cpu="Haswell-noTSX", sysroot="qemu-arm64")
    with pytest.raises(ValidationError):
        QemuTransportConfig(kind="qemu", cpu="cortex-a53; rm -rf /")
    with pytest.raises(TransportError, match="arch must be aarch64 or x86_64"):
        _qemu("riscv64", "rv64")


@pytest.mark.slow
def test_openvino_runs_on_the_emulated_a53(arm64_device, models):
    """OpenVINO's aarch64 wheel runs under qemu 7.2 (A53): the same int8 ONNX file, outputs close to the host's
    (its ARM kernels are not bit-exact with x86; the difference is reported in output steps)."""
    pytest.importorskip("openvino")
    host = agent.open_model(str(models["onnx"]), "openvino", 1)
    feeds = [{"x": x} for x in inputs(3, seed=5)]
    golden = agent.write_golden(Path(models["onnx"]).parent / "golden-openvino", feeds,
                                [host.run(f) for f in feeds], atol=models["onnx_step"], rtol=0.0)
    with _qemu("aarch64", "cortex-a53") as t:
        model = t.push(models["onnx"], models["onnx"].name)
        remote_golden = t.push(golden, "golden")
        record = run_agent(t, ["--model", model, "--format", "openvino", "--threads", "1", "--warmup", "3",
                               "--iterations", "3", "--golden", remote_golden], timeout_s=600, threads=1)
    assert record["runtime"] == "openvino" and record["machine"] == "aarch64"
    assert record["golden"]["passed"] == 3, record["golden"]["failures"]  # within one output step of the host
    assert record["instructions"]["runs"] == 3


@pytest.mark.slow
def test_build_publishes_emulated_targets(tmp_path):
    """`edgepipe build` with an emulated A53 and an emulated Haswell target: device facts, the resolved precise
    mode, emulated records (no latency_ms) in the manifests, latency.md and the report."""
    _need("qemu-aarch64")
    from targets.emulator import setup_qemu_arm64, setup_qemu_x86_64

    from .conftest import run_cli, write_release

    setup_qemu_arm64()
    setup_qemu_x86_64()
    cfg = write_release(tmp_path / "r.yaml", release="qemu-e2e",
                        targets=["qemu-a53-tflite-int8", "qemu-haswell-onnx-int8"])
    proc = run_cli(["build", str(cfg), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    root = tmp_path / "dist" / "qemu-e2e"
    for name, arch in (("qemu-a53-tflite-int8", "aarch64"), ("qemu-haswell-onnx-int8", "x86_64")):
        manifest = json.loads((root / name / "manifest.json").read_text())
        assert manifest["device"]["arch"] == arch and manifest["device"]["emulated"] is True
        latency = manifest["latency"]
        assert "latency_ms" not in latency and latency["emulated_wall_ms"]["p50"] > 0
        assert latency["instructions"]["spread"] < 0.01 and latency["golden"]["failures"] == []
        assert "these are not latencies" in (root / name / "latency.md").read_text()
        # every eval sample (tiny eval < 200) ran on the emulated device too; outputs match the host's there
        on_device = latency["on_device_verification"]
        assert on_device["samples"] == min(200, manifest["verification"]["samples"]), on_device
        assert on_device["bit_identical_to_host"] is True, on_device["vs_host"]
        assert "eval samples on the device" in (root / name / "latency.md").read_text()
    haswell = json.loads((root / "qemu-haswell-onnx-int8" / "manifest.json").read_text())
    assert haswell["device"]["int8_class"] == "avx2"
    assert haswell["latency"]["runtime_config"]["session_config"] == {"session.x64quantprecision": "1"}
    assert "emulated: not a latency" in (root / "report.html").read_text()
