"""Tests for targets/transport.py: LocalTransport push/run/pull, name safety, timeouts, probe and run_agent."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import TransportError
from targets import agent, transport
from targets.transport import LocalTransport, RunResult, make_transport, run_agent


@pytest.fixture()
def local(tmp_path):
    with LocalTransport() as t:
        yield t
    assert not t.workdir.exists()  # its own temp work dir is removed on close


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie waiting for a reaper that is not us counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pid: int, patience_s: float = 10.0) -> bool:
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_push_run_pull_round_trip(local, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "data.txt").write_text("hello")
    remote_dir = local.push(src, "bundle/in")
    remote_file = local.push(src / "sub" / "data.txt", "note.txt")
    assert Path(remote_dir) == local.workdir / "bundle" / "in" and Path(remote_file).read_text() == "hello"
    script = "import pathlib, sys; pathlib.Path('out.txt').write_text(pathlib.Path(sys.argv[1]).read_text().upper())"
    result = local.run([local.python, "-c", script, "bundle/in/sub/data.txt"], timeout_s=60)
    assert isinstance(result, RunResult) and result.returncode == 0, result.stderr
    assert result.duration_s >= 0
    local.pull("out.txt", tmp_path / "back" / "out.txt")
    assert (tmp_path / "back" / "out.txt").read_text() == "HELLO"
    local.pull(remote_dir, tmp_path / "back_dir")
    assert (tmp_path / "back_dir" / "sub" / "data.txt").read_text() == "hello"
    with pytest.raises(TransportError, match="outside the work dir"):
        local.pull(str(tmp_path / "src" / "sub" / "data.txt"), tmp_path / "stolen.txt")


def test_run_reports_exit_code_and_env(local):
    code = "import os, sys; print(os.environ['EDGEPIPE_T']); sys.stderr.write('err'); sys.exit(4)"
    result = local.run([local.python, "-c", code], timeout_s=60, env={"EDGEPIPE_T": "value"})
    assert (result.returncode, result.stdout.strip(), result.stderr) == (4, "value", "err")
    with pytest.raises(TransportError, match="argv must be a non-empty list"):
        local.run("echo hi", timeout_s=5)
    with pytest.raises(TransportError, match="cannot run"):
        local.run(["/nonexistent/edgepipe-binary"], timeout_s=5)


@pytest.mark.parametrize("name", ["a; rm -rf x", "$(touch pwned)", "../x", "/etc/passwd", "a/../../x", "x\x00y",
                                  "-rf", "a/-b", "", "a//b", "`touch pwned`", "model.onnx\n", "a\n/b"])
def test_hostile_remote_names_are_rejected(local, tmp_path, name):
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(TransportError, match="remote name"):
        local.push(src, name)
    assert not (local.workdir / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_hostile_argv_is_passed_literally(local):
    for text in ("$(touch pwned)", "a; touch pwned", "`touch pwned`"):
        result = local.run(["echo", text], timeout_s=30)
        assert result.stdout == text + "\n"
    assert not (local.workdir / "pwned").exists()
    assert not (Path.cwd() / "pwned").exists()


def test_symlink_escape_is_rejected(local, tmp_path):
    (local.workdir / "link").symlink_to(tmp_path)
    src = tmp_path / "f.txt"
    src.write_text("x")
    with pytest.raises(TransportError, match="outside the work dir"):
        local.push(src, "link/f2.txt")


def test_timeout_kills_the_whole_process_group(local):
    # The command starts a grandchild; both must be gone after the timeout, not just the direct child.
    code = ("import os, subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
            "open('pids', 'w').write(f'{os.getpid()} {child.pid}'); time.sleep(30)")
    with pytest.raises(TransportError, match=r"timed out after 2 s"):
        local.run([local.python, "-c", code], timeout_s=2)
    pids = [int(p) for p in (local.workdir / "pids").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        assert _wait_gone(pid), f"process {pid} survived the timeout"


def test_sleep_with_timeout_raises(local):
    with pytest.raises(TransportError, match=r"sleep on local timed out after 1 s"):
        local.run(["sleep", "30"], timeout_s=1)


def test_given_workdir_is_kept(tmp_path):
    with LocalTransport(workdir=tmp_path / "work") as t:
        t.push(Path(__file__), "copy.py")
    assert (tmp_path / "work" / "copy.py").is_file()
    with pytest.raises(TransportError, match="closed"):
        t.run(["true"], timeout_s=5)


def test_probe_reports_runtimes(local):
    info = local.probe()
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["machine"] and info["os"]
    assert info["runtimes"]["onnxruntime"]["available"] is True
    assert info["runtimes"]["numpy"]["available"] is True
    assert set(info["runtimes"]) == {"numpy", "onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime",
                                     "tensorflow"}


def _tiny_model_and_golden(tmp_path) -> tuple[Path, Path]:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(tmp_path / "relu.onnx"))
    x = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    golden = agent.write_golden(tmp_path / "golden", [{"x": x}], [{"y": np.maximum(x, 0)}], atol=1e-6, rtol=0.0)
    return tmp_path / "relu.onnx", golden


def test_run_agent_end_to_end(local, tmp_path, monkeypatch):
    model, golden = _tiny_model_and_golden(tmp_path)
    remote_model = local.push(model, "models/relu.onnx")
    remote_golden = local.push(golden, "golden")
    args = ["--model", remote_model, "--format", "onnx", "--threads", "1", "--warmup", "1", "--iterations", "5",
            "--golden", remote_golden]
    pushes = []
    original_push = LocalTransport.push
    monkeypatch.setattr(LocalTransport, "push", lambda self, *a: pushes.append(a[1]) or original_push(self, *a))
    result = run_agent(local, args, timeout_s=120, threads=1)
    assert result["ok"] is True and result["agent_exit_code"] == 0
    assert result["golden"] == {"checked": 1, "passed": 1, "max_abs_err": 0.0, "atol": 1e-6, "rtol": 0.0,
                                "failures": []}
    assert Path(local.agent_remote).parent == local.workdir
    run_agent(local, args, timeout_s=120, threads=1)
    assert pushes == [transport.AGENT_REMOTE_NAME]  # pushed once, then cached on the transport


def test_run_agent_thread_env_is_set(local, monkeypatch):
    seen = {}

    def fake_run(argv, timeout_s, env=None):
        seen.update(env or {})
        return RunResult(0, "noise\n" + json.dumps({"ok": True}) + "\n", "", 0.1)

    monkeypatch.setattr(local, "run", fake_run)
    assert run_agent(local, [], timeout_s=5, threads=3)["ok"] is True
    assert seen == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


def test_run_agent_errors_are_one_line(local, tmp_path):
    model, golden = _tiny_model_and_golden(tmp_path)
    args = ["--model", str(tmp_path / "absent.onnx"), "--format", "onnx", "--threads", "1", "--golden", str(golden)]
    with pytest.raises(TransportError, match=r"^agent on local failed: model file not found: .*absent\.onnx$"):
        run_agent(local, args, timeout_s=120)
    broken = tmp_path / "broken.py"
    broken.write_text("import sys; print('not json'); sys.stderr.write('agent crashed\\n'); sys.exit(1)")
    local.agent_remote = local.push(broken, "broken.py")  # stands in for an agent that dies before answering
    with pytest.raises(TransportError, match=r"^agent on local gave no JSON \(exit 1\); stderr: agent crashed$"):
        run_agent(local, [], timeout_s=60)


def test_make_transport_registry(tmp_path):
    with make_transport("local", workdir=tmp_path / "w") as t:
        assert isinstance(t, LocalTransport) and t.workdir == (tmp_path / "w").resolve()
    with pytest.raises(TransportError, match=r"unknown transport kind 'telnet'; known kinds: adb, local, qemu, ssh"):
        make_transport("telnet", host="board")
    with pytest.raises(TransportError, match="bad fields for transport 'local'"):
        make_transport("local", host="board")
