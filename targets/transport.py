"""Transports: how the host reaches a device (probe / push / run / pull) -> RunResult and the agent's JSON dict.

A Transport owns a remote work dir on its device. `push` copies files there under safe relative names, `run`
executes an argv list (never a shell string) with a timeout, `pull` copies results back. `run_agent` pushes
`targets/agent.py` once per transport and returns the agent's parsed JSON line. The host itself is a device
too (`LocalTransport`), so host profiling goes through the same path as a remote board.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import TransportError

AGENT_SOURCE = Path(__file__).with_name("agent.py")
AGENT_REMOTE_NAME = "edgepipe_agent.py"
# Remote names end up in scp/adb command lines later: a portable character set, and no component may
# start with "-" (it would read as an option) or be "." / "..".
_SAFE_NAME = re.compile(r"[A-Za-z0-9._/-]+")  # fullmatch: `$` also matches before a final newline
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
@dataclass(frozen=True)
class RunResult:
    """What a command did on the device. Text is decoded as UTF-8 with replacement characters."""

    returncode: int
    stdout: str
    stderr: str
    duration_s: float


def check_remote_name(name: str) -> str:
    """Return `name` if it is a safe relative path for the remote work dir, else raise TransportError."""
    if not isinstance(name, str) or not name:
        raise TransportError(f"remote name must be a non-empty string, got {name!r}")
    if "\x00" in name or not _SAFE_NAME.fullmatch(name):
        raise TransportError(f"remote name {name!r} may only use letters, digits and . _ / -")
    if name.startswith("/"):
        raise TransportError(f"remote name {name!r} must be relative to the transport's work dir")
    parts = name.split("/")
    if any(p in ("", ".", "..") or p.startswith("-") for p in parts):
        raise TransportError(f"remote name {name!r}: no empty, '.', '..' or '-'-leading path components")
    return name


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "..." + flat[-(limit - 3):]


class Transport(ABC):
    """A device reachable from the host. Use it as a context manager so `close` always runs."""

    kind = "abstract"
    python = sys.executable  # interpreter to use on the device; implementations set their own
    # Remote path of the agent once `run_agent` pushed it (one push per transport).
    agent_remote: str | None = None

    @abstractmethod
    def push(self, local: Path, remote_name: str) -> str:
        """Copy a file or directory into the remote work dir as `remote_name`; return its remote path."""

    @abstractmethod
    def run(self, argv: list, timeout_s: float, env: dict | None = None) -> RunResult:
        """Run argv in the remote work dir; `env` entries are added to the device's environment."""

    @abstractmethod
    def pull(self, remote_path: str, local: Path) -> None:
        """Copy a remote file or directory (inside the work dir) to `local`."""

    @abstractmethod
    def close(self) -> None:
        """Release the device and remove what this transport created there; safe to call twice."""

    def probe(self, timeout_s: float = 120.0) -> dict:
        """Machine, OS, Python version, CPU (flags, model, cores) and which runtimes import on the device
        (importing TF can be slow); targets.device.facts_from_probe turns it into DeviceFacts."""
        from .device import probe_snippet

        result = self.run([self.python, "-c", probe_snippet()], timeout_s=timeout_s)
        info = _last_json_line(result.stdout)
        if result.returncode != 0 or info is None:
            raise TransportError(
                f"probe failed on {self.kind} (exit {result.returncode}): {_one_line(result.stderr) or 'no output'}"
            )
        return info

    def agent_record(self, answer: dict) -> dict:
        """The agent's parsed JSON -> the record this device stands behind. Real devices keep it as it is; an
        emulated one renames wall time (it is not latency) and adds its own cost figure (targets/transports/qemu.py)."""
        return answer

    def benchmark(self, agent_args: list, timeout_s: float, threads: int | None = None) -> dict:
        """The agent's record from the runtime's own benchmark tool, for devices without Python (adb)."""
        raise TransportError(f"the {self.kind} device has no Python for the agent and no benchmark tool")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def check_argv(argv) -> list:
    # A string argv would be split by nobody and run by a shell by some transports: refuse it outright.
    if isinstance(argv, (str, bytes)) or not argv or not all(isinstance(a, str) for a in argv):
        raise TransportError(f"argv must be a non-empty list of strings, got {argv!r}")
    if any("\x00" in a for a in argv):
        raise TransportError("argv entries must not contain NUL bytes")
    return list(argv)


def _last_json_line(stdout: str) -> dict | None:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def run_agent(transport: Transport, agent_args: list, timeout_s: float, threads: int | None = None) -> dict:
    """Run the agent on the device with `agent_args`; return its JSON dict plus `agent_exit_code` (0, or 3 when
    golden vectors failed: the caller decides). Raise TransportError when it fails or answers no JSON.

    `threads` also pins OMP/OpenBLAS/MKL pools, so a runtime's helper libraries do not oversubscribe the CPU.
    """
    if transport.python is None:  # a device without Python: the runtime's own benchmark tool, if it has one
        return transport.benchmark(agent_args, timeout_s, threads)
    if transport.agent_remote is None:
        transport.agent_remote = transport.push(AGENT_SOURCE, AGENT_REMOTE_NAME)
    env = {name: str(threads) for name in _THREAD_ENV} if threads is not None else None
    result = transport.run([transport.python, transport.agent_remote, *agent_args], timeout_s=timeout_s, env=env)
    answer = _last_json_line(result.stdout)
    if answer is None:
        tail = _one_line(result.stderr[-2000:], limit=300) or "empty stderr"
        raise TransportError(f"agent on {transport.kind} gave no JSON (exit {result.returncode}); stderr: {tail}")
    if not answer.get("ok"):
        raise TransportError(f"agent on {transport.kind} failed: {answer.get('error', 'no error message')}")
    if result.returncode not in (0, 3):
        raise TransportError(f"agent on {transport.kind} reported ok but exited {result.returncode}")
    answer["agent_exit_code"] = result.returncode
    return transport.agent_record(answer)


def kill_group(pgid: int) -> None:
    """SIGKILL a local process group (a command and everything it started); gone already is fine."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def reap(proc: subprocess.Popen) -> None:
    """Collect a killed child's exit status without hanging on pipes something else still holds."""
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        proc.wait()


def run_local(argv: list, cwd, env: dict, timeout_s: float, what: str, stdin_path=None, on_timeout=None) -> RunResult:
    """What it does: an argv run on this machine in its own process group -> RunResult; on timeout the whole group
    is killed and TransportError names `what`. Shared by every transport that drives a local program (the
    command itself, ssh, adb, qemu). `stdin_path`: a file fed to its stdin (else /dev/null). `on_timeout`: called
    first when the time is up (a remote transport kills what the command started on the device, which may hold
    this command's pipes: an ssh ControlMaster keeps them until the remote command ends)."""
    start = time.monotonic()
    try:
        with open(stdin_path, "rb") if stdin_path is not None else contextlib.nullcontext(subprocess.DEVNULL) as stdin:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise TransportError(f"cannot run {argv[0]!r} for {what}: {exc}") from exc
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        if on_timeout is not None:
            on_timeout()
        kill_group(proc.pid)
        reap(proc)
        raise TransportError(f"{what} timed out after {timeout_s:g} s") from None
    except BaseException:  # KeyboardInterrupt too: never leave the group running
        kill_group(proc.pid)
        reap(proc)
        raise
    # Stragglers that detached from our pipes would outlive the run: the group goes with its leader.
    kill_group(proc.pid)
    return RunResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                     time.monotonic() - start)


def make_transport(kind: str, **fields) -> Transport:
    """Build the transport named `kind` from a target profile's connection fields (targets/transports/)."""
    from .transports import transport_class

    cls = transport_class(kind)
    try:
        inspect.signature(cls).bind(**fields)
    except TypeError as exc:
        raise TransportError(f"bad fields for transport {kind!r}: {exc}") from exc
    return cls(**fields)


def __getattr__(name: str):
    # LocalTransport lives in targets/transports/local.py now; old imports keep working
    if name == "LocalTransport":
        from .transports.local import LocalTransport

        return LocalTransport
    if name == "TRANSPORTS":
        from .transports import TRANSPORTS

        return TRANSPORTS
    raise AttributeError(name)
