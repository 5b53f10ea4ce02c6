"""qemu transport: an emulated Linux device on the build host -> a local work dir and commands run under qemu user
mode as another CPU: aarch64 (`qemu-aarch64 -cpu cortex-a53 -L <view of the arm64 sysroot> <sysroot python>`, set
up once by `edgepipe device setup qemu-arm64`) or x86-64 (`qemu-x86_64 -cpu Haswell-noTSX <this machine's
python>`: an AVX2 CPU without VNNI, reached from a host that has it).

What an emulated device reports differs from a real one on purpose:
- its CPU facts come from the emulator (auxv HWCAP/MIDR or CPUID, targets/emulated_cpu.py), never the host's
  /proc/cpuinfo, which qemu-user 7.2 would otherwise pass through;
- an agent record never carries `latency_ms`: emulated wall time is 100-2000x native and model dependent, so it is
  kept as `emulated_wall_ms`, and with `count_instructions` the cost figure is `instructions` (guest instructions
  executed per timed inference, counted by a TCG plugin between the agent's run markers; they repeat exactly).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import TransportError

from ..transport import RunResult, _last_json_line, _one_line, check_argv, run_local
from .local import LocalTransport

# guest `lseek` syscall numbers: the agent's run markers are lseek(/dev/null, magic offset) (targets/qemu_insn.c)
_LSEEK_NR = {"aarch64": 62, "x86_64": 8}
MARKER_ENV = "EDGEPIPE_INSN_MARKERS"
# agent record keys that hold times or memory of the emulator process -> their names in an emulated record
_EMULATED_KEYS = {"latency_ms": "emulated_wall_ms", "samples_ms": "emulated_samples_ms",
                  "load_ms": "emulated_load_ms", "peak_rss_bytes": "emulated_peak_rss_bytes",
                  "op_profile": "emulated_op_profile"}


def instruction_stats(counts: list[int]) -> dict:
    """What it does: per-inference instruction counts -> per_inference (median), min, max, spread ((max-min)/median)."""
    ordered = sorted(counts)
    n = len(ordered)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"per_inference": int(round(median)), "median": median, "min": ordered[0], "max": ordered[-1],
            "spread": (ordered[-1] - ordered[0]) / median if median else 0.0, "runs": n, "counts": list(counts),
            "source": "qemu TCG plugin: guest instructions executed between the agent's per-run markers"}


class QemuTransport(LocalTransport):
    """An emulated device: LocalTransport's work dir and argv rules, every command run under qemu-user."""

    kind = "qemu"
    emulated = True

    def __init__(self, cpu: str = "cortex-a53", sysroot: str | None = None, count_instructions: bool = True,
                 arch: str = "aarch64", workdir: Path | str | None = None) -> None:
        from ..emulator import SetupError, find_device, qemu_version

        if arch not in _LSEEK_NR:
            raise TransportError(f"qemu transport: arch must be aarch64 or x86_64, got {arch!r}")
        if arch == "x86_64" and sysroot is not None:
            raise TransportError("qemu transport: arch x86_64 runs this machine's own Python; give no sysroot")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9,=_.-]*", cpu or ""):
            raise TransportError(f"qemu transport: cpu {cpu!r} is not a qemu CPU model name")
        try:
            self.device = find_device(sysroot or ("qemu-arm64" if arch == "aarch64" else "qemu-x86_64"))
            self.version = qemu_version(self.device["qemu"])
        except SetupError as exc:
            raise TransportError(str(exc)) from exc
        if count_instructions and not Path(self.device["plugin"]).is_file():
            setup = "qemu-arm64" if arch == "aarch64" else "qemu-x86_64"
            raise TransportError(f"instruction counting needs the qemu plugin {self.device['plugin']}, which is not "
                                 f"built; run `edgepipe device setup {setup}` (or set count_instructions: false)")
        super().__init__(workdir=workdir, python=self.device["python"])
        self.arch, self.cpu, self.count_instructions = arch, cpu, count_instructions
        self.emulator = f"qemu-{self.version} {cpu}"
        self.last_counts: list[int] | None = None
        self._state = Path(tempfile.mkdtemp(prefix="edgepipe-qemu-state-"))
        self._view: Path | None = None

    # ---------------------------------------------------------------- the emulated CPU's view of the files

    def view(self) -> Path:
        """What it does: -> the -L directory for this CPU model (sysroot links + a cpuinfo of the emulated CPU),
        made on first use and cached beside the device (keyed by qemu version and the reader's source)."""
        if self._view is not None:
            return self._view
        from .. import emulated_cpu

        source = Path(emulated_cpu.__file__).read_bytes() + self.version.encode()
        tag = hashlib.sha256(source).hexdigest()[:12]
        cores = os.cpu_count() or 1
        sysroot = Path(self.device["sysroot"]) if self.arch == "aarch64" else None
        root = Path(self.device["path"]) / "views" if sysroot is not None else _x86_views()
        view = root / f"{self.cpu}-{cores}cpu-{tag}"
        read_prefix = [self.device["qemu"], "-cpu", self.cpu] + (["-L", str(sysroot)] if sysroot else [])
        emulated_cpu.make_view(view, sysroot, self.arch, read_prefix, self.python, processors=cores)
        self._view = view
        return view

    def _env(self, extra: dict | None) -> dict:
        # a fixed hash seed: str hashes decide dict and set layouts, and with them the instructions a run executes
        env = {"LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
               "HOME": str(self.workdir), "TMPDIR": str(self.workdir)}
        if self.arch == "aarch64":  # guest paths: the sysroot's own (qemu -L resolves them)
            from ..emulator import SITE_PACKAGES

            env.update(PATH="/usr/bin:/bin", PYTHONPATH="/" + SITE_PACKAGES)
        else:
            env.update(PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        env.update({str(k): str(v) for k, v in (extra or {}).items()})
        return env

    # ---------------------------------------------------------------- Transport

    def run(self, argv: list, timeout_s: float, env: dict | None = None) -> RunResult:
        argv = check_argv(argv)
        if self._closed:
            raise TransportError(f"qemu transport at {self.workdir} is closed")
        prefix = [self.device["qemu"], "-cpu", self.cpu, "-L", str(self.view())]
        argv = [self._program(argv[0]), *argv[1:]]
        extra = dict(env or {})
        counts_file = None
        if self.count_instructions:
            fd, counts_file = tempfile.mkstemp(prefix="insn-", suffix=".txt", dir=self._state)
            os.close(fd)
            # qemu's option parser splits on commas; a doubled comma is a literal one
            prefix += ["-plugin", f"{self.device['plugin']},out={counts_file.replace(',', ',,')},"
                                  f"lseek={_LSEEK_NR[self.arch]}"]
            extra[MARKER_ENV] = "1"
        self.last_counts = None
        try:
            result = run_local([*prefix, *argv], self.workdir, self._env(extra), timeout_s,
                               f"{Path(argv[0]).name} on qemu {self.cpu}")
        finally:
            if counts_file is not None:
                self.last_counts = _read_counts(counts_file)
                os.unlink(counts_file)
        return result

    def _program(self, name: str) -> str:
        """qemu-user opens its program by path and searches no PATH: a bare name is looked up the way the device's
        shell would (the sysroot's bin dirs for aarch64, this machine's PATH for x86_64)."""
        if "/" in name:
            return name
        if self.arch == "x86_64":
            return shutil.which(name) or name
        root = Path(self.device["sysroot"])
        for folder in ("usr/local/bin", "usr/bin", "bin"):
            if os.access(root / folder / name, os.X_OK):
                return str(root / folder / name)
        return name

    def probe(self, timeout_s: float = 300.0) -> dict:
        """Like every transport's probe, but the CPU features are the emulated CPU's (auxv HWCAP / CPUID, read in
        the same guest run), never a /proc/cpuinfo line the host might have passed through."""
        from ..device import PROBE_MODULES, probe_snippet
        from ..emulated_cpu import cpu_snippet, parse_cpu_line

        # device runtimes only: TensorFlow is a build-side converter, and importing it emulated takes ~40 s
        modules = {k: v for k, v in PROBE_MODULES.items() if k != "tensorflow"}
        program = cpu_snippet(self.arch) + "\n" + probe_snippet(modules)
        result = self.run([self.python, "-c", program], timeout_s=timeout_s)
        info, cpu = _last_json_line(result.stdout), parse_cpu_line(result.stdout)
        if result.returncode != 0 or info is None or cpu is None:
            raise TransportError(f"probe failed on qemu {self.cpu} (exit {result.returncode}): "
                                 f"{_one_line(result.stderr) or 'no output'}")
        info["cpu"] = dict(info.get("cpu") or {}, flags=" ".join(cpu["features"]), flags_source=cpu["source"])
        if cpu.get("model"):
            info["cpu"]["model"] = cpu["model"]
        info["emulator"] = self.emulator
        return info

    def agent_record(self, answer: dict) -> dict:
        """The agent's JSON -> an emulated record: wall time, load time and RSS renamed `emulated_*` (never
        latency), plus the instruction counts of the timed runs when they were counted."""
        record = {_EMULATED_KEYS.get(k, k): v for k, v in answer.items() if k != "peak_rss_source"}
        record.update(emulated=True, emulator=self.emulator)
        if self.count_instructions:
            counts = self.last_counts or []
            expected = answer.get("iterations")
            if len(counts) != expected:
                raise TransportError(f"qemu instruction plugin counted {len(counts)} runs, the agent timed "
                                     f"{expected}: is the agent new enough to mark its runs?")
            record["instructions"] = instruction_stats(counts)
        return record

    def close(self) -> None:
        super().close()
        shutil.rmtree(self._state, ignore_errors=True)


def _x86_views() -> Path:
    from ..emulator import cache_root

    return cache_root() / "qemu-x86_64-views"


def _read_counts(path: str) -> list[int]:
    try:
        return [int(line) for line in Path(path).read_text().split()]
    except (OSError, ValueError):
        return []
