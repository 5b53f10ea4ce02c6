"""Toolchain children (pipeline/export/child.py): results, logs and progress come back; crashes, exits and errors are
one StageError line; and building leaves this process's environment and logging as they were."""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys

import pytest

from pipeline.errors import StageError
from pipeline.export.child import last_meaningful_line, run_child
from pipeline.progress import Progress

from .conftest import calibration_for


class _Recorder(Progress):
    def __init__(self):
        super().__init__(enabled=False)
        self.events = []

    def task(self, description, total):
        recorder = self

        class _Task:
            def advance(self, n=1):
                recorder.events.append(("advance", description, n))

            def close(self):
                recorder.events.append(("close", description))

        self.events.append(("start", description, total))
        return _Task()


def test_result_logs_progress_and_native_output_come_back(tmp_path, caplog):
    progress = _Recorder()
    log = tmp_path / "logs" / "probe.log"
    with caplog.at_level(logging.WARNING):
        got = run_child("tests.child_probes:answer", 21, what="probe", log_path=log, progress=progress,
                        env={"EDGEPIPE_PROBE": "yes"}, log_name="onnxruntime.quantization")
    assert got == {"double": 42, "env": "yes"} and "EDGEPIPE_PROBE" not in os.environ
    assert progress.events == [("start", "probe", 2), ("advance", "probe", 2), ("close", "probe")]
    text = log.read_text()
    assert "native line on fd 1" in text and "native line on fd 2" in text  # C-level output: the log file only
    assert "nncf info line" in text  # the log file gets INFO too; this process only what its level asks for
    shown = {(r.name, r.getMessage()) for r in caplog.records}
    assert ("nncf", "nncf warning line") in shown and ("nncf", "nncf info line") not in shown
    assert ("onnxruntime.quantization", "root warning line") in shown  # root-logger records take the tool's name


@pytest.mark.parametrize("probe, status", [("abort", "SIGABRT"), ("segfault", "SIGSEGV")])
def test_a_native_crash_is_one_stage_error_naming_the_signal(tmp_path, probe, status):
    with pytest.raises(StageError) as info:
        run_child(f"tests.child_probes:{probe}", None, what="the converter", log_path=tmp_path / "c.log")
    message = str(info.value)
    assert message.startswith(f"the converter crashed ({status}): ") and "\n" not in message
    assert "Fatal Python error" in message  # the last meaningful line of the child's stderr


def test_exit_and_exception_are_one_line(tmp_path):
    """The message is one line; the log's last lines (or the child's traceback) ride along as exception notes."""
    with pytest.raises(StageError) as info:
        run_child("tests.child_probes:exits", None, what="probe", log_path=tmp_path / "e.log")
    assert str(info.value) == "probe failed (exit code 3): Error: the tool gave up on this model"
    with pytest.raises(StageError) as info:
        run_child("tests.child_probes:raises", None, what="probe", log_path=tmp_path / "r.log")
    assert str(info.value) == "probe failed: ValueError: bad value"
    assert "second line" in (tmp_path / "r.log").read_text()  # the traceback is in the log


def test_last_meaningful_line():
    assert last_meaningful_line("ok\n\x1b[31mERROR: it broke\x1b[0m\nbye\n") == "ERROR: it broke"
    assert last_meaningful_line("one\ntwo\n\n") == "two"
    assert last_meaningful_line("") == "no output"


def _global_state():
    root = logging.getLogger()
    fds = tuple(os.fstat(fd).st_ino for fd in (1, 2))
    return {"environ": dict(os.environ), "disable": root.manager.disable, "root_handlers": list(root.handlers),
            "root_level": root.level, "streams": (id(sys.stdout), id(sys.stderr)), "fds": fds,
            "sigint": signal.getsignal(signal.SIGINT)}


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnxruntime", "openvino", "nncf", "torch")),
                    reason="needs onnxruntime, openvino, nncf and torch")
def test_building_leaves_environment_and_logging_of_this_process_alone(tiny_build, tmp_path):
    """ONNX int8 quantize and OpenVINO convert/quantize, run inline (this process) into a fresh cache: os.environ,
    the logging disable level, the root logger and stdout/stderr are as they were (onnxruntime's quantizers log
    through the root logger, whose first call would add a handler to a root that has none: it has none here)."""
    from pipeline.cache import Cache
    from pipeline.config import load_profile
    from pipeline.runner import Runner

    runner, state = tiny_build
    fresh = Runner(Cache(tmp_path / "cache"), Progress(enabled=False), log=lambda m: None)
    root = logging.getLogger()
    saved_handlers = root.handlers[:]
    root.handlers = []  # as in a plain Python process (pytest adds its own)
    try:
        before = _global_state()
        onnx_int8 = load_profile("host-onnx-int8", state.plan.base_dir)
        ov_int8 = load_profile("host-openvino-int8", state.plan.base_dir)
        fp32 = fresh.run_stage(state, "export_onnx", state.torch_model, onnx_int8.name, onnx_int8)
        q = fresh.run_stage(state, "quantize_onnx", fp32, onnx_int8.name, onnx_int8,
                            calibration_for(runner, state, onnx_int8))
        ir = fresh.run_stage(state, "convert_openvino", fp32, ov_int8.name, ov_int8)
        ov_q = fresh.run_stage(state, "quantize_openvino", ir, ov_int8.name, ov_int8,
                               calibration_for(runner, state, ov_int8))
        after = _global_state()
    finally:
        root.handlers = saved_handlers
    assert q.precision == "int8" and ov_q.precision == "int8" and ir.kind == "openvino"
    assert after == before
    for art, log in ((q, "onnxruntime.quantization.log"), (ir, "openvino.log"), (ov_q, "nncf.log")):
        assert (art.root / "logs" / log).is_file() and not any(f.startswith("logs/") for f in art.files)
