"""adb transport at the argv level, against tests/fake_adb.py (the timeout kill is in test_transport_conformance.py) (it re-parses argv as the real client does: `shell`
joins its arguments into one string for the device's sh), plus the benchmark tools' output parsers. No Android
device or emulator runs here: nothing in this file talks to a real phone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import TransportError
from targets import bench_tools
from targets.transport import run_agent

from .boards import FAKE_ADB, adb_workdir, fake_adb_env

SERIAL = "emulator-5554"


@pytest.fixture()
def phone(tmp_path, monkeypatch):
    from targets.transports.adb import AdbTransport

    log = fake_adb_env(monkeypatch, tmp_path, SERIAL)
    with AdbTransport(SERIAL, adb=str(FAKE_ADB), workdir=adb_workdir(tmp_path), python=None) as t:
        t.calls = log
        yield t
    assert not Path(t.run_dir).exists() and not Path(t.run_dir + ".ctl").exists()


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_every_call_names_the_serial_and_shell_gets_one_quoted_string(phone, tmp_path):
    words = ["$(touch pwned)", "a; touch pwned", "`touch pwned`", "x'y\"z", "-n", "ünï", "*", "a b"]
    result = phone.run(["printf", "%s\\n", *words], timeout_s=30)
    assert result.stdout.splitlines() == words
    calls = _calls(phone.calls)
    assert all(c[:2] == ["-s", SERIAL] for c in calls)
    shell = [c for c in calls if c[2] == "shell"]
    assert shell and all(len(c) == 4 for c in shell)  # one pre-quoted string, never argv words for adb to join
    assert not list(Path(phone.run_dir).iterdir()) and not (tmp_path / "pwned").exists()


def test_push_run_pull_and_names(phone, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("adb")
    remote = phone.push(src, "in/dir")
    assert Path(remote, "sub", "a.txt").read_text() == "adb"
    phone.run(["sh", "-c", "tr a-z A-Z < in/dir/sub/a.txt > out.txt"], timeout_s=30)
    phone.pull("out.txt", tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "ADB"
    for name in ("../x", "a; rm -rf /", "$(id)", "-rf", "/etc/passwd"):
        with pytest.raises(TransportError, match="remote name"):
            phone.push(src / "sub" / "a.txt", name)


def test_unknown_serial_and_offline_device_retries(tmp_path, monkeypatch):
    from targets.transports import adb

    fake_adb_env(monkeypatch, tmp_path, SERIAL)
    waits = []
    monkeypatch.setattr(adb, "_sleep", waits.append)
    with pytest.raises(TransportError, match=r"^adb other: mkdir failed: error: device 'other' not found "
                                             r"\(after 2 attempts\)$"):
        adb.AdbTransport("other", adb=str(FAKE_ADB), workdir=adb_workdir(tmp_path), retries=1, retry_backoff_s=0.5)
    offline = tmp_path / "offline"
    offline.write_text("2")
    monkeypatch.setenv("FAKE_ADB_OFFLINE", str(offline))
    with adb.AdbTransport(SERIAL, adb=str(FAKE_ADB), workdir=str(tmp_path / "w2"), retries=3,
                          retry_backoff_s=0.5) as t:
        assert t.attempts == 3 and waits == [0.5, 0.5, 1.0]
    with pytest.raises(TransportError, match="not found; install the Debian package adb"):
        adb.AdbTransport(SERIAL, adb="edgepipe-no-such-adb")


LITERT_LOG = """STARTING!
Log parameter values verbosely: [0]
Num threads: [1]
Graph: [/data/local/tmp/edgepipe/run-1/model/model.tflite]
Loaded model /data/local/tmp/edgepipe/run-1/model/model.tflite
The input model file size (MB): 0.31
Initialized session in 4.21ms.
Running benchmark for at least 5 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=5 first=812 curr=655 min=640 max=812 avg=684.2 std=63

Running benchmark for at least 50 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
count=50 first=650 curr=641 min=622 max=731 avg=648.66 std=19

Inference timings in us: Init: 4210, First inference: 812, Warmup (avg): 684.2, Inference (avg): 648.66
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=2.1 overall=3.4
Overall peak memory footprint (MB) via periodic monitoring: 9.5
"""

PERF_TEST_LOG = """Session creation time cost: 0.0312 s
First inference time cost: 2 ms
Total inference time cost: 0.0854 s
Total inference requests: 50
Average inference time cost: 1.708 ms
Total inference run time: 0.0861 s
Number of inferences per second: 580.7
Avg CPU usage: 98 %
Peak working set size: 31457280 bytes
Avg CPU usage:98
Peak working set size:31457280
Runs:50
Min Latency: 0.00161 s
Max Latency: 0.00243 s
P50 Latency: 0.00169 s
P90 Latency: 0.00182 s
P95 Latency: 0.00190 s
P99 Latency: 0.00243 s
P999 Latency: 0.00243 s
"""


def _args(fmt: str, model: str) -> list[str]:
    return ["--model", model, "--format", fmt, "--threads", "2", "--warmup", "5", "--iterations", "50",
            "--golden", "golden"]


def test_benchmark_tool_outputs_become_the_agent_record():
    lite = bench_tools.parse_output("/data/local/tmp/benchmark_model", LITERT_LOG,
                                    bench_tools.agent_args(_args("tflite", "m.tflite")))
    assert lite["latency_ms"] == {"mean": 0.64866, "min": 0.622, "max": 0.731, "std": 0.019}
    assert (lite["load_ms"], lite["peak_rss_bytes"], lite["iterations"], lite["threads"]) == (4.21, 9961472, 50, 2)
    assert lite["golden"]["checked"] == 0 and "not checked" in lite["golden"]["skipped"]
    ort = bench_tools.parse_output("/data/local/tmp/onnxruntime_perf_test", PERF_TEST_LOG,
                                   bench_tools.agent_args(_args("onnx", "m.onnx")))
    assert ort["latency_ms"] == {"mean": 1.708, "min": 1.61, "max": 2.43, "p50": 1.69, "p90": 1.82, "p99": 2.43}
    assert (ort["load_ms"], ort["peak_rss_bytes"], ort["runtime"]) == (31.2, 31457280, "onnxruntime")
    argv = bench_tools.tool_argv("/x/benchmark_model", bench_tools.agent_args(_args("tflite", "/m.tflite")))
    assert argv[:2] == ["/x/benchmark_model", "--graph=/m.tflite"] and "--num_runs=50" in argv
    with pytest.raises(TransportError, match="cannot run onnx models"):
        bench_tools.tool_argv("/x/benchmark_model", bench_tools.agent_args(_args("onnx", "/m.onnx")))
    with pytest.raises(TransportError, match="printed no timing"):
        bench_tools.parse_output("/x/benchmark_model", "Segmentation fault", bench_tools.agent_args(_args("tflite", "m")))


def test_device_without_python_runs_the_benchmark_binary(tmp_path, monkeypatch):
    from targets.transports.adb import AdbTransport

    fake_adb_env(monkeypatch, tmp_path, SERIAL)
    tool = tmp_path / "device" / "benchmark_model"
    tool.parent.mkdir()
    (tmp_path / "litert.log").write_text(LITERT_LOG)
    # the stand-in tool prints LiteRT's log and records the argv it got
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/tool-argv\ncat {tmp_path}/litert.log\n')
    tool.chmod(0o755)
    with AdbTransport(SERIAL, adb=str(FAKE_ADB), workdir=str(tmp_path / "w"), benchmark_binary=str(tool)) as t:
        model = t.push(Path(__file__), "model/model.tflite")
        record = run_agent(t, _args("tflite", model), timeout_s=60, threads=2)
        facts = t.probe()
    assert record["ok"] and record["measured_by"] == "benchmark_model" and record["latency_ms"]["mean"] == 0.64866
    got = (tmp_path / "tool-argv").read_text().splitlines()
    assert got[0] == f"--graph={model}" and "--num_threads=2" in got and "--warmup_runs=5" in got
    assert facts["machine"] and facts["runtimes"]["ai_edge_litert"]["available"] is True
    with AdbTransport(SERIAL, adb=str(FAKE_ADB), workdir=str(tmp_path / "w")) as t:
        with pytest.raises(TransportError, match="no Python .* and the profile names no benchmark_binary"):
            run_agent(t, _args("tflite", "m.tflite"), timeout_s=60)
