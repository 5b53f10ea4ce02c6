"""Toolchain child processes: `module:function` + a picklable job -> the function's result, computed in a fresh
Python process (`python -m pipeline.export.child JOB`).

DESIGN §5: toolchains that can crash natively, print from C++ or need process-wide settings (environment variables,
logging) run here, never in the build's process. What the child gets and gives back:

- the job, pickled into a job file (a stage passes `(artifact, ctx)`: datasets and calibration sets travel as the
  recipes that rebuild them, pipeline/executor/unit.py);
- an environment of its own: the build's, plus what the toolchain needs (`env`, e.g. OpenVINO's telemetry
  opt-out), plus PYTHONPATH naming this package first;
- its native stdout and stderr go to a log file (a stage's: `<work dir>/logs/<name>.log`, kept in the cache entry
  beside the artifact, not part of it);
- its Python log records (edgepipe's, the toolchains' named loggers and the root logger) and its progress events
  come back over a pipe and are logged / drawn here (pipeline/logs.py, pipeline/progress.py);
- an exception it raises comes back as the same edgepipe error (a StageError line written by our code), any other
  as one StageError line; a non-zero exit or a signal (sys.exit in a library, SIGSEGV, SIGABRT) becomes one
  StageError naming the exit status and the last meaningful line of its log.

The child function has the signature `function(job, progress) -> result`; `stage_job` unpacks a stage's job.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .. import logs
from ..artifact import LOG_DIR
from ..errors import EdgepipeError, StageError, exit_status, portable
from ..progress import ForwardProgress, apply_event

CHILD_MODULE = "pipeline.export.child"
TIMEOUT_S = 3600
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def last_meaningful_line(text: str) -> str:
    """What it does: a tool's output -> its most telling line: the last one naming an error, else the last one."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if re.search(r"error|exception|fatal", ln, re.IGNORECASE)]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def child_env(extra: dict | None = None) -> dict:
    """What it does: the variables a toolchain needs -> the child's environment (this process's stays as it is)."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    return env


def run_stage_child(target: str, artifact, ctx, *, what: str, log_name: str, env: dict | None = None,
                    cwd: Path | None = None, timeout_s: float = TIMEOUT_S):
    """What it does: a stage's `module:function(job, progress)` + its input artifact and context -> the function's
    result, computed in a child process that writes into ctx.workdir; its log is <workdir>/logs/<log_name>.log."""
    job = (artifact, dataclasses.replace(ctx, progress=None, stage=None))
    return run_child(target, job, what=what, log_path=Path(ctx.workdir) / LOG_DIR / f"{log_name}.log",
                     progress=ctx.progress, env=env, cwd=cwd, timeout_s=timeout_s, log_name=log_name)


def stage_job(job, progress):
    """What it does: in the child, a stage's job + the child's progress sink -> (artifact, ctx) to work with."""
    artifact, ctx = job
    ctx.progress = progress
    return artifact, ctx


def run_child(target: str, job, *, what: str, log_path: Path, progress=None, env: dict | None = None,
              cwd: Path | None = None, timeout_s: float = TIMEOUT_S, log_name: str = logs.LOGGER):
    """What it does: `module:function` + a picklable job -> function(job, progress) computed in a child process;
    `what` names the tool in error lines, records the child logs through the root logger arrive as `log_name`."""
    from multiprocessing.connection import Connection

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="edgepipe-child-"))
    read_fd, write_fd = os.pipe()
    try:
        job_file = scratch / "job.pkl"
        job_file.write_bytes(pickle.dumps({"target": target, "job": job, "what": what, "fd": write_fd,
                                           "level": logs.toolchain_level(), "edgepipe": logs.edgepipe_level()}))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(job_file)], cwd=cwd, env=child_env(env),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=(write_fd,))
        os.close(write_fd)
        write_fd = None
        with Connection(read_fd, writable=False) as conn:
            read_fd = None
            outcome = _serve(conn, proc, progress, log_name, what, timeout_s)
    finally:
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
        shutil.rmtree(scratch, ignore_errors=True)
    code = proc.wait()
    if outcome is not None and outcome[0] == "ok" and code == 0:
        return outcome[1]
    if outcome is not None and outcome[0] == "err":
        raise outcome[1]
    tail = log_path.read_text(encoding="utf-8", errors="replace")
    err = StageError(f"{what} {'crashed' if code < 0 else 'failed'} ({exit_status(code)}): "
                     f"{last_meaningful_line(tail)}")
    err.add_note(f"{log_path}, last lines:\n" + "\n".join(tail.splitlines()[-20:]))
    raise err


def _serve(conn, proc, progress, log_name: str, what: str, timeout_s: float):
    """What it does: the child's pipe -> its progress drawn and records logged here until it closes; returns its
    last ("ok", result) / ("err", exception) message, or None when it sent none (it crashed or exited)."""
    deadline = time.monotonic() + timeout_s
    tasks: dict = {}
    outcome = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StageError(f"{what} did not finish within {timeout_s:g} s")
            if not conn.poll(min(remaining, 1.0)):
                if proc.poll() is not None and not conn.poll(0):
                    return outcome  # exited; a grandchild may still hold the pipe open
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return outcome
            if msg[0] == "progress":
                if progress is not None:
                    apply_event(progress, tasks, msg[1:])
            elif msg[0] == "log":
                logs.reemit(msg[1], default_name=log_name)
            else:
                outcome = msg
    except BaseException:
        proc.kill()  # a timeout, Ctrl-C or a failure here: the child must not outlive the stage
        proc.wait()
        raise
    finally:
        for task in tasks.values():
            task.close()


def _resolve(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(job_file: str) -> int:
    """Child side: run the job's function and send its result (or its exception) to the parent."""
    import faulthandler
    import logging
    from multiprocessing.connection import Connection

    faulthandler.enable()  # a native crash prints "Fatal Python error: Segmentation fault" and the stack to the log
    spec = pickle.loads(Path(job_file).read_bytes())
    conn = Connection(spec["fd"], readable=False)
    local = logging.StreamHandler(sys.stderr)  # the full record (INFO and up) goes to the log file as well
    local.setLevel(logging.INFO)
    local.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logs.forward(conn.send, spec["level"], edgepipe=spec["edgepipe"], catch_root=True, local=local)
    try:
        result = _resolve(spec["target"])(spec["job"], ForwardProgress(conn.send))
    except Exception as err:  # noqa: BLE001 - every failure goes back to the parent, as one line
        import traceback

        traceback.print_exc()
        if not isinstance(err, EdgepipeError):
            first = str(err).strip().splitlines()
            err = StageError(f"{spec['what']} failed: {type(err).__name__}: {first[0][:300] if first else ''}"
                             .rstrip(": "))
        conn.send(("err", portable(err, "child")))
        return 1
    conn.send(("ok", result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
