"""One contract, every transport available here: local, ssh (a real sshd on 127.0.0.1), adb (the fake adb at the
argv level; no phone), qemu (this machine's programs under qemu-x86_64 as an emulated Haswell: the host's sh and
sleep exist there, the arm64 sysroot has no shell; tests/test_transport_qemu.py covers the aarch64 device). Probe, push/run/pull, exit codes and env, timeout kill of the whole process group on the
device, hostile names, the agent round trip with golden vectors, cleanup on close."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.errors import TransportError
from targets.transport import run_agent

from .boards import (FAKE_ADB, adb_workdir, count_processes, fake_adb_env, hang_argv, loopback, marker,  # noqa: F401
                     ssh_fields, wait_count)
from .test_transport import _tiny_model_and_golden
from .test_transport_qemu import x86_device  # noqa: F401  (session fixture used by the qemu kind)

KINDS = ["local", "ssh", "adb", "qemu"]


@pytest.fixture(params=KINDS)
def device(request, tmp_path, monkeypatch):
    kind = request.param
    if kind == "local":
        from targets.transports.local import LocalTransport

        t = LocalTransport()
    elif kind == "ssh":
        from targets.transports.ssh import SshTransport

        t = SshTransport(**ssh_fields(request.getfixturevalue("loopback")), workdir=str(tmp_path / "board"))
    elif kind == "qemu":
        from .test_transport_qemu import _qemu

        request.getfixturevalue("x86_device")  # `edgepipe device setup qemu-x86_64` (skips without qemu-user)
        t = _qemu("x86_64", "Haswell-noTSX")
    else:
        from targets.transports.adb import AdbTransport

        fake_adb_env(monkeypatch, tmp_path, "conformance-1")
        t = AdbTransport("conformance-1", adb=str(FAKE_ADB), workdir=adb_workdir(tmp_path), python=sys.executable)
    with t:
        yield t
    root = getattr(t, "run_dir", None) or t.workdir
    assert not Path(root).exists(), f"{kind}: close left {root}"


def test_push_run_pull_contract(device, tmp_path):
    src = tmp_path / "in"
    (src / "deep").mkdir(parents=True)
    (src / "deep" / "x.txt").write_text("payload")
    remote = device.push(src, "data/in")
    assert remote.endswith("/data/in")
    again = device.push(src / "deep" / "x.txt", "data/in")  # a push replaces what the name held
    assert again == remote
    code = ("import os, sys, pathlib; p = pathlib.Path(sys.argv[1]); "
            "pathlib.Path('result.json').write_text(os.environ['EP_V'] + p.read_text()); sys.exit(5)")
    result = device.run([device.python, "-c", code, "data/in"], timeout_s=60, env={"EP_V": "v;$(x)"})
    assert result.returncode == 5 and result.duration_s >= 0, result.stderr
    device.pull("result.json", tmp_path / "out" / "result.json")
    assert (tmp_path / "out" / "result.json").read_text() == "v;$(x)payload"
    with pytest.raises(TransportError, match="argv must be a non-empty list"):
        device.run("echo hi", timeout_s=5)


def test_timeout_kills_everything_the_command_started(device):
    mark = marker()
    with pytest.raises(TransportError, match=r"^sh on \S+( \S+)? timed out after 2 s$"):
        device.run(hang_argv(mark), timeout_s=2)
    assert wait_count(mark) == 0  # the hung command and the grandchild it started are gone from the device
    run_dir = getattr(device, "run_dir", None)
    if run_dir is not None:  # the device-side wrapper and its watchdog too
        assert count_processes(f"edgepipe-run {run_dir}") == 0
    assert device.run(["true"], timeout_s=30).returncode == 0  # the transport is still usable


def test_hostile_names_and_arguments(device, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    for name in ("../escape", "/etc/passwd", "a;touch pwned", "$(touch pwned)", "-rf", "a/../../b", "x\ny"):
        with pytest.raises(TransportError, match="remote name"):
            device.push(src, name)
    words = ["$(touch pwned)", "`touch pwned`", "a; touch pwned", "'\"", "-v", "ü", "a  b"]
    out = device.run([device.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *words], 30)
    assert json.loads(out.stdout) == words
    assert not (tmp_path / "pwned").exists() and not (Path.cwd() / "pwned").exists()


def test_agent_round_trip_with_golden_vectors(device, tmp_path):
    model, golden = _tiny_model_and_golden(tmp_path)
    args = ["--model", device.push(model, "m/relu.onnx"), "--format", "onnx", "--threads", "1", "--warmup", "1",
            "--iterations", "10", "--golden", device.push(golden, "golden")]
    result = run_agent(device, args, timeout_s=120, threads=1)
    # an emulated device's wall times are not latencies: they come back under emulated_* names, with instructions
    samples = "emulated_samples_ms" if result.get("emulated") else "samples_ms"
    assert result["golden"]["passed"] == result["golden"]["checked"] == 1 and len(result[samples]) == 10
    assert ("latency_ms" in result) is not bool(result.get("emulated"))
