"""Functions the toolchain-child tests run in a child process (pipeline/export/child.py): `function(job, progress)`."""
from __future__ import annotations

import logging
import os
import signal


def answer(job, progress):
    """Logs at every level (named loggers and the root logger), prints, reports progress -> job doubled."""
    with progress.task("probe", 2) as task:
        task.advance(2)
    os.write(1, b"native line on fd 1\n")
    os.write(2, b"native line on fd 2\n")
    logging.getLogger("nncf").info("nncf info line")
    logging.getLogger("nncf").warning("nncf warning line")
    logging.warning("root warning line")  # what onnxruntime's quantizers do
    return {"double": job * 2, "env": os.environ.get("EDGEPIPE_PROBE")}


def abort(job, progress):
    os.write(2, b"about to abort\n")
    os.abort()


def segfault(job, progress):
    os.kill(os.getpid(), signal.SIGSEGV)


def exits(job, progress):
    print("Error: the tool gave up on this model", flush=True)
    raise SystemExit(3)


def raises(job, progress):
    raise ValueError("bad value\nsecond line")


def telemetry(onnx_path, progress):
    """OpenVINO's and NNCF's telemetry decisions in a child started like the OpenVINO stages' children."""
    import nncf.telemetry.wrapper as wrapper
    import openvino as ov
    import openvino_telemetry

    ov.convert_model(onnx_path)
    return [openvino_telemetry.Telemetry().consent, type(wrapper.telemetry).__name__]
