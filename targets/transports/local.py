"""Local transport: the host itself as a device -> a temp work dir and subprocesses without a shell, each in its
own process group (a timeout kills everything the command started)."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline.errors import TransportError

from ..transport import RunResult, Transport, check_argv, check_remote_name, run_local


class LocalTransport(Transport):
    """The host as a device: a temp work dir (removed on close unless given) and subprocesses without a shell."""

    kind = "local"

    def __init__(self, workdir: Path | str | None = None, python: str = sys.executable) -> None:
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="edgepipe-local-")).resolve()
            self._owns_workdir = True
        else:
            self.workdir = Path(workdir).resolve()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._owns_workdir = False
        self.python = python
        self.agent_remote = None
        self._closed = False

    def _remote(self, name: str) -> Path:
        if self._closed:
            raise TransportError(f"local transport at {self.workdir} is closed")
        target = (self.workdir / check_remote_name(name)).resolve()
        # A symlink already inside the work dir could still point elsewhere: check after resolving.
        if target != self.workdir and self.workdir not in target.parents:
            raise TransportError(f"remote name {name!r} resolves outside the work dir {self.workdir}")
        return target

    def push(self, local: Path, remote_name: str) -> str:
        local = Path(local)
        target = self._remote(remote_name)
        if not local.exists():
            raise TransportError(f"cannot push {local}: no such file or directory")
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            if local.is_dir():
                shutil.copytree(local, target, symlinks=False)
            else:
                shutil.copy2(local, target)
        except OSError as exc:
            raise TransportError(f"cannot push {local} to {target}: {exc}") from exc
        return str(target)

    def run(self, argv: list, timeout_s: float, env: dict | None = None) -> RunResult:
        argv = check_argv(argv)
        if self._closed:
            raise TransportError(f"local transport at {self.workdir} is closed")
        full_env = dict(os.environ, **{str(k): str(v) for k, v in (env or {}).items()})
        # Own session = own process group, so a timeout kills the command and everything it spawned.
        return run_local(argv, self.workdir, full_env, timeout_s, f"{Path(argv[0]).name} on local")

    def probe(self, timeout_s: float = 120.0) -> dict:
        """The host's facts without starting anything: runtimes by their installed versions (python -c importing
        TensorFlow would take seconds), CPU from /proc/cpuinfo, like the snippet reads it on a device."""
        if self.python != sys.executable:
            return super().probe(timeout_s)
        import importlib.metadata
        import importlib.util
        import json
        import platform

        from ..device import PROBE_MODULES, read_cpu

        runtimes = {}
        for name, module in sorted(PROBE_MODULES.items()):
            top = module.split(".")[0]
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                runtimes[name] = {"available": False, "error": f"ModuleNotFoundError: No module named '{module}'"}
                continue
            dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(top, top)
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            runtimes[name] = {"available": True, "version": version}
        cpu = read_cpu()  # the snippet's own CPU reading, in this process
        return json.loads(json.dumps({"machine": platform.machine(), "os": platform.platform(),
                                      "system": platform.system(), "python": platform.python_version(),
                                      "python_executable": sys.executable, "runtimes": runtimes, "cpu": cpu,
                                      "cores": cpu["cores"]}))

    def pull(self, remote_path: str, local: Path) -> None:
        source = Path(remote_path)
        if not source.is_absolute():
            source = self._remote(remote_path)
        source = source.resolve()
        if source != self.workdir and self.workdir not in source.parents:
            raise TransportError(f"cannot pull {remote_path}: outside the work dir {self.workdir}")
        if not source.exists():
            raise TransportError(f"cannot pull {remote_path}: no such file or directory on local")
        local = Path(local)
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, local, dirs_exist_ok=True)
            else:
                shutil.copy2(source, local)
        except OSError as exc:
            raise TransportError(f"cannot pull {remote_path} to {local}: {exc}") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
