"""adb transport: an Android device (serial from the profile) -> push / run / pull / probe through `adb -s SERIAL`,
in a run dir `<workdir>/run-<random>` (default under /data/local/tmp/edgepipe) removed on close.

`adb shell` joins its arguments into one string that the device's shell parses, so every command goes to it as
one string of shlex-quoted words (targets/transports/posix.py: its own session via toybox `setsid`, process group
killed on timeout, a watchdog on the device). A device without Python (`python: null`) runs the runtime's own
benchmark tool named by `benchmark_binary` (targets/bench_tools.py) and its output becomes the agent's record.

Tested against a fake `adb` (tests/fake_adb.py) that re-parses its argv like the real one; no phone was tried.
"""
from __future__ import annotations

import secrets
import shlex
import shutil
import time
from pathlib import Path

from pipeline.errors import TransportError

from ..transport import RunResult, Transport, check_argv, check_remote_name, run_local
from .posix import (CONTAINED, PULL_CHECK, control_dir, inside, kill_command, pull_check_error, pulled_into,
                    with_retries, wrapped_command)

# adb's own complaints (first line of its output), and those that mean "not reachable right now" (worth a retry).
_ADB_PREFIXES = ("error: device", "error: no devices", "error: closed", "error: protocol fault",
                 "error: cannot connect", "error: more than one", "adb: error", "adb: failed")
_CONNECTION_ERRORS = ("offline", "not found", "no devices", "unauthorized", "closed", "cannot connect",
                      "protocol fault", "still connecting")


def _sleep(seconds: float) -> None:  # the back-off wait (a seam for tests that count the waits)
    time.sleep(seconds)


class AdbTransport(Transport):
    """An Android device over adb: argv-only commands quoted for its shell, a private run dir."""

    kind = "adb"

    def __init__(self, serial: str, adb: str = "adb", workdir: str = "/data/local/tmp/edgepipe",
                 python: str | None = None, benchmark_binary: str | None = None, retries: int = 0,
                 retry_backoff_s: float = 2.0) -> None:
        if serial.startswith("-"):
            raise TransportError(f"adb serial {serial!r} must not start with '-'")
        found = shutil.which(adb)
        if found is None:
            raise TransportError(f"adb executable {adb!r} not found; install the Debian package adb (or set "
                                 "transport.adb to its path)")
        self._adb = str(Path(found).resolve())
        self.serial, self.python, self.benchmark_binary = serial, python, benchmark_binary
        self.workdir = workdir.rstrip("/") or "/"
        self.retries, self.retry_backoff_s = retries, retry_backoff_s
        self.agent_remote = None
        self.attempts = 0
        self.run_dir = None
        self._closed = False
        self._with_retries(self._make_run_dir)

    # ------------------------------------------------------------------ plumbing

    def _adb_run(self, args: list, timeout_s: float, what: str) -> RunResult:
        return run_local([self._adb, "-s", self.serial, *args], None, None, timeout_s, what)

    def _failure(self, result: RunResult, action: str) -> TransportError | None:
        text = (result.stderr + "\n" + result.stdout).strip()
        lines = [ln for ln in text.splitlines() if ln.strip()]
        first = lines[0].strip() if lines else f"exit {result.returncode}"
        if not first.startswith(_ADB_PREFIXES):
            return None  # not adb's own complaint: the command's output
        err = TransportError(f"adb {self.serial}: {action} failed: {first}")
        err.retryable = any(marker in first.lower() for marker in _CONNECTION_ERRORS)
        return err

    def _with_retries(self, step):
        return with_retries(step, self.retries, self.retry_backoff_s, _sleep)

    def _shell(self, script: str, *args: str, timeout_s: float = 60.0, action: str = "shell") -> RunResult:
        result = self._adb_run(["shell", shlex.join(["sh", "-c", script, "edgepipe", *args])], timeout_s,
                               f"{action} on adb")
        if result.returncode != 0:
            err = self._failure(result, action)
            if err is not None:
                raise err
        return result

    def _make_run_dir(self) -> None:
        self.attempts += 1
        candidate = f"{self.workdir}/run-{secrets.token_hex(8)}"
        result = self._shell('mkdir -p "$1" && mkdir "$2" "$3" && cd "$2" && pwd -P', self.workdir, candidate,
                             control_dir(candidate), action="mkdir")
        if result.returncode != 0:
            raise TransportError(f"adb {self.serial}: cannot create a run dir under {self.workdir}: "
                                 f"{' '.join((result.stderr or result.stdout).split())[-300:]}")
        self.run_dir = candidate
        self._real_run_dir = result.stdout.strip() or candidate

    def _check_open(self) -> None:
        if self._closed or self.run_dir is None:
            raise TransportError(f"adb transport to {self.serial} is closed")

    # ------------------------------------------------------------------ Transport

    def push(self, local: Path, remote_name: str) -> str:
        self._check_open()
        target = f"{self.run_dir}/{check_remote_name(remote_name)}"
        parent = target.rsplit("/", 1)[0]
        local = Path(local).resolve()
        if not local.exists():
            raise TransportError(f"cannot push {local}: no such file or directory")

        def step():
            prep = self._shell('mkdir -p "$1" && ' + CONTAINED + 'rm -rf "$3"', parent, self._real_run_dir,
                               target, action="push")
            if prep.returncode != 0:
                raise TransportError(f"cannot push to {remote_name!r} on adb {self.serial}: outside the run dir")
            result = self._adb_run(["push", str(local), target], 600.0, "push on adb")
            if result.returncode != 0:
                raise self._failure(result, "push") or TransportError(
                    f"adb {self.serial}: push failed: {' '.join(result.stderr.split())[-300:]}")

        self._with_retries(step)
        return target

    def run(self, argv: list, timeout_s: float, env: dict | None = None) -> RunResult:
        argv = check_argv(argv)
        self._check_open()
        pgid_file = f"{control_dir(self.run_dir)}/{secrets.token_hex(6)}"
        command = wrapped_command(self.run_dir, pgid_file, argv, env, timeout_s)

        def kill_on_device():
            try:  # the adb client's end is not enough: the command runs on the device until its group is killed
                self._adb_run(["shell", kill_command(pgid_file)], 30.0, "kill on adb")
            except TransportError:
                pass  # the device's watchdog kills it shortly after the timeout

        result = run_local([self._adb, "-s", self.serial, "shell", command], None, None, timeout_s,
                           f"{Path(argv[0]).name} on adb {self.serial}", on_timeout=kill_on_device)
        if result.returncode != 0:
            err = self._failure(result, "run")
            if err is not None:
                raise err
        return result

    def pull(self, remote_path: str, local: Path) -> None:
        self._check_open()
        source = f"{self.run_dir}/{check_remote_name(inside(self.run_dir, remote_path))}"
        local = Path(local).resolve()
        check = self._shell(PULL_CHECK, source, self._real_run_dir, action="pull")
        err = pull_check_error(check.returncode, check.stderr, remote_path, f"adb {self.serial}")
        if err is not None:
            raise err
        with pulled_into(local, remote_path) as item:
            result = self._adb_run(["pull", source, str(item)], 600.0, "pull on adb")
            if result.returncode != 0:
                raise self._failure(result, "pull") or TransportError(
                    f"adb {self.serial}: pull failed: {' '.join(result.stderr.split())[-300:]}")

    def probe(self, timeout_s: float = 120.0) -> dict:
        """With Python on the device, the shared probe snippet; without, uname/getprop and /proc/cpuinfo read by
        the shell (runtimes then: the benchmark tool, version unknown)."""
        if self.python is not None:
            return super().probe(timeout_s)
        from ..device import PROBE_MODULES

        script = ('uname -m; getprop ro.build.version.release 2>/dev/null || uname -r; '
                  'echo @@cpu; cat /proc/cpuinfo; echo @@cores; nproc 2>/dev/null || echo 0')
        result = self.run(["sh", "-c", script], timeout_s=timeout_s)
        if result.returncode != 0 or "@@cpu" not in result.stdout:
            raise TransportError(f"probe failed on adb {self.serial} (exit {result.returncode}): "
                                 f"{' '.join(result.stderr.split())[-300:] or 'no output'}")
        head, _, rest = result.stdout.partition("@@cpu")
        cpuinfo, _, cores = rest.partition("@@cores")
        machine, release = (head.strip().splitlines() + ["", ""])[:2]
        cpu = _parse_cpuinfo(cpuinfo)
        cpu["cores"] = int(cores.strip() or 0) or cpu["processors"]
        runtimes = {name: {"available": False, "error": "no Python on the device"} for name in PROBE_MODULES}
        if self.benchmark_binary:
            from ..bench_tools import LITERT, tool_kind

            name = "ai_edge_litert" if tool_kind(self.benchmark_binary) == LITERT else "onnxruntime"
            runtimes[name] = {"available": True, "version": f"unknown ({Path(self.benchmark_binary).name})"}
        return {"machine": machine.strip(), "os": f"Android {release.strip()}", "system": "Linux", "python": "",
                "python_executable": "", "runtimes": runtimes, "cpu": cpu, "cores": cpu["cores"]}

    def benchmark(self, agent_args: list, timeout_s: float, threads: int | None = None) -> dict:
        from ..bench_tools import agent_args as parse_agent_args
        from ..bench_tools import parse_output, tool_argv

        if not self.benchmark_binary:
            raise TransportError(f"adb {self.serial}: the device has no Python (transport.python is null) and the "
                                 "profile names no benchmark_binary; set one of them")
        args = parse_agent_args(agent_args)
        result = self.run(tool_argv(self.benchmark_binary, args), timeout_s=timeout_s)
        if result.returncode != 0:
            raise TransportError(f"{Path(self.benchmark_binary).name} on adb {self.serial} exited "
                                 f"{result.returncode}: {' '.join((result.stderr + result.stdout).split())[-300:]}")
        record = parse_output(self.benchmark_binary, result.stdout + "\n" + result.stderr, args)
        record["agent_exit_code"] = 0
        return record

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.run_dir is not None:
            try:
                self._shell('rm -rf "$1" "$2"', self.run_dir, control_dir(self.run_dir), timeout_s=120.0,
                            action="cleanup")
            except TransportError:
                pass  # best effort: the next run uses a new dir


def _parse_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo text -> the fields targets.device.read_cpu reports (flags, model, processors, part, ...)."""
    cpu = {"flags": "", "model": "", "processors": 0, "part": "", "implementer": ""}
    keys = {"flags": "flags", "features": "flags", "model name": "model", "cpu model": "model",
            "hardware": "model", "cpu part": "part", "cpu implementer": "implementer"}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "processor":
            cpu["processors"] += 1
        elif key in keys and not cpu[keys[key]]:
            cpu[keys[key]] = value
    return cpu
