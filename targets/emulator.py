"""Emulated devices, set up on request: Debian arm64 packages + aarch64 wheels -> a rootless arm64 sysroot for
qemu user mode, and the instruction-counting TCG plugin, cached under $XDG_CACHE_HOME/edgepipe/devices.

`edgepipe device setup qemu-arm64` (setup_qemu_arm64) is the only step that downloads: Debian's arm64 python3
closure through a private apt state (the system's apt configuration is not touched), unpacked with dpkg-deb -x,
and the aarch64 wheels of numpy / onnxruntime / ai-edge-litert / openvino at the versions constraints.txt pins,
installed with `pip --target --platform ... --only-binary=:all:`. The directory is named by a hash of everything
that went into it (recipe, suite, packages, wheel versions, platform tags), built in a temp dir and renamed, so a
rerun with the same inputs is a no-op and a killed setup leaves nothing half-made. Builds never call this; a
qemu target whose device is not set up fails with one line naming the command.

`edgepipe device setup qemu-x86_64` only builds the plugin: the x86-64 guest is this machine's own Python run
as another CPU model (`qemu-x86_64 -cpu Haswell-noTSX`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.errors import TransportError

RECIPE = 1  # bump when the way the sysroot is made changes
SUITE = "bookworm"
DEBS = ("python3", "libstdc++6")
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert", "openvino")
# glibc of the suite (2.36) caps the manylinux tags; openvino's aarch64 wheel needs 2_35, ai-edge-litert's 2_27
PLATFORMS = ("manylinux2014_aarch64", *(f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)))
APT_SOURCES = (f"deb http://deb.debian.org/debian {SUITE} main\n"
               f"deb http://deb.debian.org/debian {SUITE}-updates main\n"
               f"deb http://deb.debian.org/debian-security {SUITE}-security main\n")
PLUGIN_SOURCE = Path(__file__).with_name("qemu_insn.c")
SYSROOT_PYTHON = "usr/bin/python3.11"
SITE_PACKAGES = "opt/sp"
REPO_CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"
QEMU = {"aarch64": "qemu-aarch64", "x86_64": "qemu-x86_64"}
# what a fresh Debian machine lacks for these steps, by the command that is missing
APT_HINT = "apt-get install -y qemu-user gcc"


class SetupError(TransportError):
    """An emulated device cannot be set up (missing tool, download or install failed): one line."""


def cache_root() -> Path:
    """What it does: -> $XDG_CACHE_HOME/edgepipe/devices (~/.cache when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgepipe" / "devices"


def _say(line: str) -> None:
    print(f"[device setup] {line}", file=sys.stderr, flush=True)


def _run(argv: list, what: str, timeout_s: float = 900, env: dict | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise SetupError(f"{what}: {argv[0]} is not installed ({APT_HINT})") from exc
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{what}: timed out after {timeout_s:g} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        raise SetupError(f"{what} failed (exit {proc.returncode}): {(lines[-1] if lines else 'no output').strip()}")
    return proc.stdout


def qemu_binary(arch: str) -> str:
    """What it does: an ISA -> the path of the plugin-capable (dynamic) qemu-user binary for it, or SetupError."""
    name = QEMU.get(arch)
    if name is None:
        raise SetupError(f"no qemu-user emulator for arch {arch!r}; expected aarch64 or x86_64")
    path = shutil.which(name)
    if path is None:
        raise SetupError(f"{name} is not installed; install Debian's qemu-user ({APT_HINT})")
    return path


def qemu_version(binary: str) -> str:
    """What it does: a qemu binary -> its version ("7.2.22")."""
    out = _run([binary, "--version"], f"{binary} --version", timeout_s=30)
    match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", out)
    if not match:
        raise SetupError(f"cannot read the version of {binary}: {out.strip()[:100]!r}")
    return match.group(1)


def pinned_versions(constraints: Path = REPO_CONSTRAINTS) -> dict[str, str]:
    """What it does: constraints.txt -> {wheel: version} for the runtimes the sysroot gets (same as the host's);
    outside a checkout (an installed wheel has no constraints.txt) the versions installed here."""
    if not constraints.is_file():
        return _installed_versions()
    pins = {}
    try:
        lines = constraints.read_text().splitlines()
    except OSError as exc:
        raise SetupError(f"cannot read {constraints}: {exc.strerror}") from exc
    for line in lines:
        name, sep, version = line.partition("==")
        if sep and name.strip().lower().replace("_", "-") in WHEELS:
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    missing = [w for w in WHEELS if w not in pins]
    if missing:
        raise SetupError(f"{constraints} pins no version for {', '.join(missing)}")
    return pins


def _installed_versions() -> dict[str, str]:
    from importlib import metadata

    pins = {}
    for wheel in WHEELS:
        try:
            pins[wheel] = metadata.version(wheel)
        except metadata.PackageNotFoundError as exc:
            raise SetupError(f"no constraints.txt here and {wheel} is not installed: cannot tell which version the "
                             f"emulated device should get (pip install edgepipe[all])") from exc
    return pins


def recipe_inputs() -> dict:
    """What it does: -> everything the arm64 sysroot is made from (its cache key is the hash of this)."""
    return {"recipe": RECIPE, "suite": SUITE, "debs": list(DEBS), "wheels": pinned_versions(),
            "platforms": list(PLATFORMS), "python": "3.11"}


def device_dir(name: str = "qemu-arm64") -> Path:
    """What it does: -> the content-addressed cache dir of the arm64 sysroot for the current recipe inputs."""
    digest = hashlib.sha256(json.dumps(recipe_inputs(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / f"{name}-{digest}"


def plugin_path(qemu: str) -> Path:
    """What it does: a qemu binary -> where the instruction plugin built for it lives (keyed by source + version)."""
    digest = hashlib.sha256(PLUGIN_SOURCE.read_bytes() + qemu_version(qemu).encode()).hexdigest()[:16]
    return cache_root() / f"qemu-plugin-{digest}" / "libedgepipe_insn.so"


def build_plugin(qemu: str) -> Path:
    """What it does: -> the compiled instruction-count plugin for `qemu` (gcc; no qemu headers needed), cached."""
    target = plugin_path(qemu)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".libedgepipe_insn.", suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        _run(["gcc", "-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-o", tmp, str(PLUGIN_SOURCE)],
             "building the qemu instruction plugin", timeout_s=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _apt_options(state: Path) -> list[str]:
    return ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
            "-o", f"Dir::Etc::sourcelist={state / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::State::status={state / 'status'}",
            "-o", f"Dir::Cache={state / 'cache'}", "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root"]


def _fetch_debs(state: Path, sysroot: Path) -> int:
    for sub in ("lists/partial", "cache/archives/partial"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    (state / "sources.list").write_text(APT_SOURCES)
    opts = _apt_options(state)
    _run(["apt-get", *opts, "-qq", "update"], "apt-get update (arm64, private state)")
    # an empty dpkg status makes apt download the whole closure, which is what an empty sysroot needs
    _run(["apt-get", *opts, "-qq", "-y", "-d", "--no-install-recommends", "install", *DEBS],
         f"downloading Debian arm64 {' '.join(DEBS)}")
    debs = sorted((state / "cache" / "archives").glob("*.deb"))
    if not debs:
        raise SetupError("apt-get downloaded no arm64 packages")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpacking {deb.name}")
    return len(debs)


def _install_wheels(sysroot: Path, pins: dict) -> dict:
    target = sysroot / SITE_PACKAGES
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
            "--only-binary=:all:", "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
            *(a for p in PLATFORMS for a in ("--platform", p)),
            *(["-c", str(REPO_CONSTRAINTS)] if REPO_CONSTRAINTS.is_file() else []),
            *(f"{w}=={v}" for w, v in sorted(pins.items()))]
    _run(argv, "installing aarch64 wheels", env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    found = {}
    for info in target.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[name.lower().replace("_", "-")] = version
    return dict(sorted(found.items()))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def setup_qemu_arm64(force: bool = False) -> dict:
    """What it does: -> the emulated aarch64 device, built once (arm64 sysroot + runtimes, instruction plugin) and
    cached; returns {path, qemu, qemu_version, python, runtimes, plugin, ...}. Progress goes to stderr; any
    failure is one SetupError line. force=True rebuilds even when the cache has it."""
    qemu = qemu_binary("aarch64")
    version = qemu_version(qemu)
    final = device_dir()
    meta_file = final / "device.json"
    if force and final.exists():
        _say(f"removing {final} (--force)")
        shutil.rmtree(final)
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        _say(f"qemu-arm64 is set up: {final}")
    else:
        meta = _build_sysroot(final)
    plugin = build_plugin(qemu)
    return {**meta, "path": str(final), "qemu": qemu, "qemu_version": version, "plugin": str(plugin),
            "python": str(final / "sysroot" / SYSROOT_PYTHON)}


def _build_sysroot(final: Path) -> dict:
    start = time.monotonic()
    pins = pinned_versions()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        sysroot = tmp / "sysroot"
        sysroot.mkdir()
        _say(f"downloading Debian {SUITE} arm64 packages: {' '.join(DEBS)} (+ their dependencies)")
        count = _fetch_debs(tmp / "apt", sysroot)
        _say(f"unpacked {count} packages into the sysroot ({time.monotonic() - start:.0f} s)")
        if not (sysroot / SYSROOT_PYTHON).is_file():
            raise SetupError(f"the arm64 packages contain no {SYSROOT_PYTHON}")
        _say("installing aarch64 wheels: " + ", ".join(f"{w} {v}" for w, v in sorted(pins.items())))
        wheels = _install_wheels(sysroot, pins)
        wrong = {w: wheels.get(w) for w, v in pins.items() if wheels.get(w) != v}
        if wrong:
            raise SetupError(f"pip installed other runtime versions than constraints.txt pins: {wrong}")
        shutil.rmtree(tmp / "apt")  # the .debs are unpacked; their cache would only double the size
        meta = {"name": "qemu-arm64", "arch": "aarch64", "inputs": recipe_inputs(), "debs": count,
                "runtimes": {w: wheels[w] for w in sorted(pins)}, "wheels": wheels, "sysroot": "sysroot",
                "python_in_sysroot": SYSROOT_PYTHON, "site_packages": SITE_PACKAGES,
                "size_bytes": _size(tmp), "build_s": round(time.monotonic() - start, 1)}
        (tmp / "device.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another setup finished the same inputs first: its result is as good as ours
            if not (final / "device.json").is_file():
                raise
            return json.loads((final / "device.json").read_text())
        _say(f"qemu-arm64 ready in {meta['build_s']} s: {final} ({meta['size_bytes'] / 2**20:.0f} MiB)")
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup_qemu_x86_64(force: bool = False) -> dict:
    """What it does: -> the emulated x86-64 device (this machine's Python under qemu-x86_64 as another CPU model):
    nothing to download, only the instruction plugin to build. force=True rebuilds the plugin."""
    qemu = qemu_binary("x86_64")
    if force and plugin_path(qemu).exists():
        plugin_path(qemu).unlink()
    plugin = build_plugin(qemu)
    _say(f"qemu-x86_64 ready: plugin {plugin}")
    return {"name": "qemu-x86_64", "arch": "x86_64", "qemu": qemu, "qemu_version": qemu_version(qemu),
            "plugin": str(plugin), "python": sys.executable}


def find_device(name: str) -> dict:
    """What it does: a setup name -> its cached device report without building anything; SetupError with the
    setup command when it is not set up yet."""
    if name == "qemu-x86_64":
        qemu = qemu_binary("x86_64")
        return {"arch": "x86_64", "qemu": qemu, "plugin": str(plugin_path(qemu)), "python": sys.executable}
    if name != "qemu-arm64":
        raise SetupError(f"unknown emulated device {name!r}; known: qemu-arm64, qemu-x86_64")
    final = device_dir(name)
    if not (final / "device.json").is_file():
        raise SetupError(f"emulated device {name} is not set up here (no {final}); run `edgepipe device setup {name}`")
    qemu = qemu_binary("aarch64")
    return {"arch": "aarch64", "path": str(final), "qemu": qemu, "plugin": str(plugin_path(qemu)),
            "sysroot": str(final / "sysroot"), "python": str(final / "sysroot" / SYSROOT_PYTHON)}
