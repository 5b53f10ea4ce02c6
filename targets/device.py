"""Devices: what a target runs on -> DeviceFacts (ISA, the CPU features that change int8 arithmetic, cores, OS,
runtimes, emulated or not), read through the target's transport before any stage runs, and the int8 settings
that depend on them.

The build host is one device among others: nothing here reads the machine that happens to build, except through
a LocalTransport when the target *is* the host. Stdlib only (no numpy): the probe snippet runs on the device's
Python, which may be old and bare.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

# CPU features that change how int8 kernels compute (or whether they saturate), by ISA.
# x86: VNNI (vpdpbusd) sums u8*s8 products in 32 bit; without it AVX2/AVX-512 kernels use vpmaddubsw, whose
# 16-bit pair sums saturate. AMX has its own int8 tiles. ARM: dot-product (sdot/udot) and i8mm (smmla).
INT8_FEATURES = {
    "x86_64": ("sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"),
    "aarch64": ("asimd", "asimddp", "i8mm", "sve", "sve2", "bf16"),
}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}

def read_cpu() -> dict:
    """What it does: this machine's /proc/cpuinfo and affinity -> {"flags", "model", "processors", "part",
    "implementer", "cores"}. Stdlib only and plain syntax: its source is also sent to devices (probe_snippet)."""
    import os

    cpu = {"flags": "", "model": "", "processors": 0, "part": "", "implementer": ""}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip().lower(), value.strip()
                if key == "processor":
                    cpu["processors"] += 1
                elif key in ("flags", "features") and not cpu["flags"]:
                    cpu["flags"] = value
                elif key in ("model name", "cpu model", "hardware") and not cpu["model"]:
                    cpu["model"] = value
                elif key == "cpu part" and not cpu["part"]:
                    cpu["part"] = value
                elif key == "cpu implementer" and not cpu["implementer"]:
                    cpu["implementer"] = value
    except OSError as exc:
        cpu["error"] = str(exc)
    try:
        cpu["cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpu["cores"] = os.cpu_count() or 0
    return cpu


# Runs on the device's Python (maybe old): plain syntax, stdlib only, one JSON line out.
_PROBE_MAIN = r"""
import importlib, json, platform, sys
found = {}
for name, module in %(modules)r:
    try:
        importlib.import_module(module)
        top = sys.modules[module.split(".")[0]]
        found[name] = {"available": True, "version": str(getattr(top, "__version__", "unknown"))}
    except Exception as exc:
        found[name] = {"available": False, "error": (type(exc).__name__ + ": " + str(exc)).splitlines()[0][:200]}
cpu = read_cpu()
print(json.dumps({"machine": platform.machine(), "os": platform.platform(), "system": platform.system(),
                  "python": platform.python_version(), "python_executable": sys.executable, "runtimes": found,
                  "cpu": cpu, "cores": cpu["cores"]}))
"""
PROBE_MODULES = {
    "numpy": "numpy",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow",
}


def probe_snippet(modules: dict[str, str] | None = None) -> str:
    """What it does: runtime module names -> the probe program (python -c) for the device."""
    import inspect

    modules = PROBE_MODULES if modules is None else modules
    return inspect.getsource(read_cpu) + _PROBE_MAIN % {"modules": sorted(modules.items())}


# ARM "CPU part" ids of the cores a camera or board usually has (for a readable name when cpuinfo has none).
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
              "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
              "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1",
              "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd4f": "Neoverse-V2", "0xd40": "Neoverse-V1"}


@dataclass(frozen=True)
class DeviceFacts:
    """What a target runs on. `features` holds only the int8-relevant CPU features of its ISA (INT8_FEATURES)."""

    arch: str
    cpu_model: str
    cores: int
    features: tuple[str, ...]
    os: str = ""
    python: str = ""
    runtimes: dict = field(default_factory=dict)  # name -> version, for the runtimes that import there
    emulated: bool = False
    emulator: str = ""  # e.g. "qemu-aarch64 10.0.2 -cpu cortex-a53"
    transport: str = "local"

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def int8_class(self) -> str:
        """What it does: -> one word for how int8 dot products are computed here (the part of the identity that
        changes int8 results): x86 'vnni' / 'amx' / 'avx2' / 'sse', arm 'i8mm' / 'dotprod' / 'neon'."""
        if self.arch == "x86_64":
            if self.has("amx_int8"):
                return "amx"
            if self.has("avx512_vnni") or self.has("avx_vnni"):
                return "vnni"
            return "avx2" if self.has("avx2") else "sse"
        if self.arch == "aarch64":
            return "i8mm" if self.has("i8mm") else "dotprod" if self.has("asimddp") else "neon"
        return self.arch

    def identity(self, runtime: str | None = None) -> dict:
        """What it does: -> the facts that can change an int8 artifact's outputs or a measurement on this device
        (for cache keys): ISA, int8 features, the runtime's version, emulated or not, the CPU model."""
        out = {"arch": self.arch, "int8": self.int8_class, "features": list(self.features),
               "emulated": self.emulated, "cpu_model": self.cpu_model}
        if runtime is not None:
            out["runtime"] = {runtime: self.runtimes.get(runtime, "absent")}
        return out

    def key(self, runtime: str | None = None) -> str:
        return hashlib.sha256(json.dumps(self.identity(runtime), sort_keys=True).encode()).hexdigest()

    def to_json(self) -> dict:
        out = asdict(self)
        out["features"] = list(self.features)
        out["int8_class"] = self.int8_class
        return out


def facts_from_probe(probe: dict, transport: str = "local", emulated: bool = False, emulator: str = "") -> DeviceFacts:
    """What it does: the probe snippet's JSON -> DeviceFacts (flags filtered to the int8-relevant ones)."""
    arch = normalise_arch(probe.get("machine", ""))
    cpu = probe.get("cpu") or {}
    flags = set(str(cpu.get("flags", "")).split())
    features = tuple(f for f in INT8_FEATURES.get(arch, ()) if f in flags)
    model = cpu.get("model") or _ARM_PARTS.get(str(cpu.get("part", "")).lower(), "") or arch
    runtimes = {name: info.get("version", "unknown") for name, info in (probe.get("runtimes") or {}).items()
                if info.get("available")}
    return DeviceFacts(arch=arch, cpu_model=str(model), cores=int(probe.get("cores") or cpu.get("processors") or 0),
                       features=features, os=str(probe.get("os", "")), python=str(probe.get("python", "")),
                       runtimes=runtimes, emulated=emulated, emulator=emulator, transport=transport)


def normalise_arch(machine: str) -> str:
    machine = machine.strip().lower()
    return _ARCH_ALIASES.get(machine, machine)


def declared_facts(decl: dict, transport: str) -> DeviceFacts:
    """What it does: a profile's declared device (arch, features, cpu_model, cores, runtimes) -> DeviceFacts, for
    targets built without reaching the device (its features are taken as declared, and the record says so)."""
    arch = normalise_arch(decl["arch"])
    return DeviceFacts(arch=arch, cpu_model=decl.get("cpu_model") or arch, cores=int(decl.get("cores") or 0),
                       features=tuple(f for f in INT8_FEATURES.get(arch, ()) if f in set(decl.get("features", ()))),
                       os=decl.get("os", ""), runtimes=dict(decl.get("runtimes") or {}),
                       emulated=bool(decl.get("emulated", False)), transport=transport)
