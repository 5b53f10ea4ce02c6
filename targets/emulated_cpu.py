"""Emulated CPUs: a qemu-user CPU model -> its features read from inside the guest (aarch64: the auxv HWCAP words the
emulator hands the program, plus MIDR_EL1; x86_64: the CPUID instruction as the emulator answers it), and a
`/proc/cpuinfo` that says the same thing.

Why: qemu-user 7.2 passes the host's /proc/cpuinfo through to the guest. On this x86 host that gives an aarch64
program x86 text (onnxruntime's cpuinfo library then crashes on import) and gives an emulated Haswell the host's
AVX-512 VNNI flags. So the features of an emulated device are never read from /proc/cpuinfo; they come from what
the emulator itself reports, and a "view" directory per CPU model carries a matching proc/cpuinfo that qemu's `-L`
prefix shows the guest instead of the host's file (qemu looks every absolute guest path up under -L first).

Stdlib only; the snippets below run on the guest's Python (ctypes, mmap).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.errors import TransportError

# Linux uapi bit order of AT_HWCAP / AT_HWCAP2 on arm64 (arch/arm64/include/uapi/asm/hwcap.h), as cpuinfo names them.
HWCAP_NAMES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
               "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2_NAMES = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
                "svebf16 i8mm bf16 dgh rng bti mte").split()

# CPUID bits that matter for int8 kernels and for a readable flags line, as Linux names them:
# (leaf, subleaf, register, bit, name)
CPUID_BITS = (
    (1, 0, "edx", 25, "sse"), (1, 0, "edx", 26, "sse2"), (1, 0, "ecx", 0, "pni"), (1, 0, "ecx", 9, "ssse3"),
    (1, 0, "ecx", 12, "fma"), (1, 0, "ecx", 19, "sse4_1"), (1, 0, "ecx", 20, "sse4_2"), (1, 0, "ecx", 22, "movbe"),
    (1, 0, "ecx", 23, "popcnt"), (1, 0, "ecx", 25, "aes"), (1, 0, "ecx", 28, "avx"), (1, 0, "ecx", 29, "f16c"),
    (7, 0, "ebx", 3, "bmi1"), (7, 0, "ebx", 5, "avx2"), (7, 0, "ebx", 8, "bmi2"), (7, 0, "ebx", 16, "avx512f"),
    (7, 0, "ebx", 17, "avx512dq"), (7, 0, "ebx", 28, "avx512cd"), (7, 0, "ebx", 30, "avx512bw"),
    (7, 0, "ebx", 31, "avx512vl"), (7, 0, "ecx", 1, "avx512vbmi"), (7, 0, "ecx", 11, "avx512_vnni"),
    (7, 0, "edx", 22, "amx_bf16"), (7, 0, "edx", 24, "amx_tile"), (7, 0, "edx", 25, "amx_int8"),
    (7, 1, "eax", 4, "avx_vnni"),
)

# Guest program: prints one JSON line {"emulated_cpu": {...}}. Plain syntax; runs before any runtime is imported.
_AARCH64_SNIPPET = r"""
import ctypes, json, mmap
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
libc.getauxval.argtypes = [ctypes.c_ulong]
hw, hw2 = libc.getauxval(16), libc.getauxval(26)
names = [n for i, n in enumerate(%(hwcap)r) if hw >> i & 1] + [n for i, n in enumerate(%(hwcap2)r) if hw2 >> i & 1]
midr = None
if "cpuid" in names:  # EL0 may read MIDR_EL1 (the kernel, here qemu, emulates the MRS)
    code = bytes.fromhex("000038d5c0035fd6")  # mrs x0, midr_el1; ret
    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write(code)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)()
print(json.dumps({"emulated_cpu": {"source": "auxv HWCAP/HWCAP2 + MIDR_EL1", "hwcap": hw, "hwcap2": hw2,
                                   "features": names, "midr": midr}}))
"""

# x86-64 machine code: cpuid(leaf=edi, subleaf=esi) -> uint32[4] at rdx (eax, ebx, ecx, edx); rbx is callee-saved.
_CPUID_CODE = "534989d089f889f10fa241890041895804418948084189500c5bc3"
_X86_SNIPPET = r"""
import ctypes, json, mmap
buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(bytes.fromhex(%(code)r))
fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(
    ctypes.addressof(ctypes.c_char.from_buffer(buf)))
def cpuid(leaf, sub=0):
    out = (ctypes.c_uint32 * 4)()
    fn(leaf, sub, out)
    return dict(zip(("eax", "ebx", "ecx", "edx"), out))
top, ext = cpuid(0)["eax"], cpuid(0x80000000)["eax"]
vendor = b"".join(cpuid(0)[r].to_bytes(4, "little") for r in ("ebx", "edx", "ecx")).decode("ascii", "replace")
names = [n for leaf, sub, reg, bit, n in %(bits)r if leaf <= top and cpuid(leaf, sub)[reg] >> bit & 1]
brand = ""
if ext >= 0x80000004:
    raw = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                   for v in cpuid(leaf).values())
    brand = raw.split(b"\0")[0].decode("ascii", "replace").strip()
print(json.dumps({"emulated_cpu": {"source": "CPUID", "features": names, "vendor": vendor, "model": brand}}))
"""


def cpu_snippet(arch: str) -> str:
    """What it does: an ISA -> the guest program that prints the emulated CPU's features as one JSON line."""
    if arch == "aarch64":
        return _AARCH64_SNIPPET % {"hwcap": HWCAP_NAMES, "hwcap2": HWCAP2_NAMES}
    if arch == "x86_64":
        return _X86_SNIPPET % {"code": _CPUID_CODE, "bits": CPUID_BITS}
    raise TransportError(f"no emulated-CPU reader for arch {arch!r}; expected aarch64 or x86_64")


def parse_cpu_line(stdout: str) -> dict | None:
    """What it does: a guest's stdout -> the `emulated_cpu` dict of the first line that carries one (or None)."""
    for line in stdout.splitlines():
        if line.startswith('{"emulated_cpu"'):
            try:
                return json.loads(line)["emulated_cpu"]
            except (ValueError, KeyError):
                return None
    return None


def cpuinfo_text(arch: str, cpu: dict, processors: int) -> str:
    """What it does: the emulated CPU's features (+ MIDR or CPUID brand) -> /proc/cpuinfo text in Linux's layout."""
    blocks = []
    for n in range(max(1, processors)):
        if arch == "aarch64":
            midr = cpu.get("midr") or 0
            blocks.append(
                f"processor\t: {n}\nBogoMIPS\t: 100.00\nFeatures\t: {' '.join(cpu['features'])}\n"
                f"CPU implementer\t: {midr >> 24 & 0xff:#04x}\nCPU architecture: 8\n"
                f"CPU variant\t: {midr >> 20 & 0xf:#x}\nCPU part\t: {midr >> 4 & 0xfff:#05x}\n"
                f"CPU revision\t: {midr & 0xf}\n")
        else:
            blocks.append(f"processor\t: {n}\nvendor_id\t: {cpu.get('vendor', '')}\n"
                          f"model name\t: {cpu.get('model') or 'emulated x86_64'}\n"
                          f"flags\t\t: fpu {' '.join(cpu['features'])}\n")
    return "\n".join(blocks) + "\n"


def make_view(view: Path, sysroot: Path | None, arch: str, read_prefix: list, python: str, timeout_s: float = 120,
              processors: int | None = None) -> dict:
    """What it does: a CPU model -> `view`, a directory for qemu's -L: one symlink per top-level entry of `sysroot`
    (none for x86_64, whose guest uses the host's files) plus proc/cpuinfo written from what the emulated CPU
    reports (read by a first guest run of `read_prefix` + python that imports nothing but ctypes). Idempotent;
    built in a temp dir and renamed. Returns the emulated CPU dict (also stored as view/cpu.json)."""
    info_file = view / "cpu.json"
    if info_file.is_file():
        return json.loads(info_file.read_text())
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}.", dir=view.parent))
    try:
        prefix = list(read_prefix)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1"}
        proc = subprocess.run([*prefix, python, "-c", cpu_snippet(arch)], capture_output=True, text=True,
                              timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
        cpu = parse_cpu_line(proc.stdout)
        if proc.returncode != 0 or cpu is None:
            tail = " ".join(proc.stderr.split())[-300:] or "no output"
            raise TransportError(f"cannot read the emulated CPU ({' '.join(prefix[:1])} exit {proc.returncode}): {tail}")
        if sysroot is not None:
            for entry in sorted(os.listdir(sysroot)):
                if entry != "proc":
                    os.symlink(sysroot / entry, tmp / entry)
        (tmp / "proc").mkdir()
        (tmp / "proc" / "cpuinfo").write_text(cpuinfo_text(arch, cpu, processors or os.cpu_count() or 1))
        (tmp / "cpu.json").write_text(json.dumps(cpu, sort_keys=True))
        try:
            os.rename(tmp, view)
        except OSError:  # another process made the same view first: theirs is as good
            if not info_file.is_file():
                raise
        return json.loads(info_file.read_text())
    except subprocess.TimeoutExpired as exc:
        raise TransportError(f"reading the emulated CPU timed out after {timeout_s:g} s") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
