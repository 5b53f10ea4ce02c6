"""Emulated devices benchmark: the tiny dense int8 model (tests/qemu_models.py) as ONNX and TFLite, run by the agent
on qemu CPU models and on this host -> a BENCHMARKS.md section with guest instructions per inference (median and
spread over the timed runs, repeatable), emulated wall time, its ratio to the host's wall time, and whether the
outputs are bit-identical to the host's.

    python tools/bench_qemu.py                    # sets up the emulators if needed (downloads once), writes BENCHMARKS.md
    python tools/bench_qemu.py --out /tmp/b.md    # elsewhere

`edgepipe device setup qemu-arm64` / `qemu-x86_64` is called first (a no-op when cached): this tool is an explicit
setup-and-measure step, never part of a build.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from targets import agent  # noqa: E402
from targets.transport import run_agent  # noqa: E402
from tests.qemu_models import IN, HIDDEN, OUT, build_onnx_int8, build_tflite_int8, inputs  # noqa: E402
from tools.bench_formats import cpu_model, write_section  # noqa: E402

MARKS = ("<!-- bench_qemu:start -->", "<!-- bench_qemu:end -->")
PRECISE = "session.x64quantprecision=1"
# (arch, qemu cpu, format, runtime options)
CASES = (
    ("aarch64", "cortex-a53", "onnx", ()), ("aarch64", "cortex-a53", "tflite", ()),
    ("aarch64", "cortex-a72", "onnx", ()), ("aarch64", "cortex-a72", "tflite", ()),
    ("aarch64", "cortex-a76", "onnx", ()), ("aarch64", "cortex-a76", "tflite", ()),
    ("x86_64", "Haswell-noTSX", "onnx", ()), ("x86_64", "Haswell-noTSX", "onnx", (PRECISE,)),
    ("x86_64", "Haswell-noTSX", "tflite", ()),
)


def _args(model: str, fmt: str, golden: str, warmup: int, iterations: int, options: tuple) -> list[str]:
    args = ["--model", model, "--format", fmt, "--threads", "1", "--warmup", str(warmup),
            "--iterations", str(iterations), "--golden", golden]
    for option in options:
        args += ["--option", option]
    return args


def _measure(transport, model: Path, golden: Path, fmt: str, warmup: int, iterations: int, options: tuple) -> dict:
    remote_model = transport.push(model, model.name)
    remote_golden = transport.push(golden, "golden")
    return run_agent(transport, _args(remote_model, fmt, remote_golden, warmup, iterations, options),
                     timeout_s=1800, threads=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=10)
    args = ap.parse_args()

    from targets.emulator import setup_qemu_arm64, setup_qemu_x86_64
    from targets.transports.local import LocalTransport
    from targets.transports.qemu import QemuTransport

    arm = setup_qemu_arm64()
    setup_qemu_x86_64()
    work = Path(tempfile.mkdtemp(prefix="bench-qemu-"))
    models = {"onnx": build_onnx_int8(work), "tflite": build_tflite_int8(work)}
    feeds = [{"x": x} for x in inputs(3, seed=5)]
    golden = {}
    for fmt, path in models.items():
        session = agent.open_model(str(path), fmt, 1)
        golden[fmt] = agent.write_golden(work / f"golden-{fmt}", feeds, [session.run(f) for f in feeds], 0.0, 0.0)
    host = {}
    with LocalTransport() as local:
        for fmt in models:
            host[fmt] = _measure(local, models[fmt], golden[fmt], fmt, args.warmup, args.iterations * 20, ())
            print(f"host {fmt}: p50 {host[fmt]['latency_ms']['p50']:.4f} ms", file=sys.stderr)
    rows = []
    for arch, cpu, fmt, options in CASES:
        start = time.monotonic()
        with QemuTransport(cpu=cpu, arch=arch) as t:
            rec = _measure(t, models[fmt], golden[fmt], fmt, args.warmup, args.iterations, options)
        counts, wall = rec["instructions"], rec["emulated_wall_ms"]["p50"]
        ratio = wall / host[fmt]["latency_ms"]["p50"]
        g = rec["golden"]
        same = "yes" if g["max_abs_err"] == 0.0 else f"no (max abs diff {g['max_abs_err']:.4g})"
        rows.append(f"| {arch} | {cpu} | {fmt}{' ' + ' '.join(options) if options else ''} | "
                    f"{counts['per_inference']:,} | {counts['spread'] * 100:.3f} % | {wall:.3f} | {ratio:,.0f}x | {same} |")
        print(rows[-1], f"({time.monotonic() - start:.1f} s)", file=sys.stderr)
    body = "\n".join([
        "## Emulated devices: instructions per inference under qemu (`tools/bench_qemu.py`)", "",
        f"Host: {cpu_model()} ({platform.machine()}), qemu-user {QemuTransport(cpu='cortex-a53').version} "
        f"(Debian, dynamic build with TCG plugins), arm64 sysroot {Path(arm['path']).name} (Debian "
        f"python3 {arm['inputs']['suite']}, onnxruntime {arm['runtimes']['onnxruntime']}, ai-edge-litert "
        f"{arm['runtimes']['ai-edge-litert']}). Model: tests/qemu_models.py, a {IN}->{HIDDEN}->{OUT} dense ReLU "
        f"network, int8 (ONNX QDQ per-channel u8/s8; TFLite full-integer int8 I/O); 1 thread, {args.warmup} warm-up "
        f"runs, {args.iterations} counted runs per row. Host wall p50: ONNX "
        f"{host['onnx']['latency_ms']['p50']:.4f} ms, TFLite {host['tflite']['latency_ms']['p50']:.4f} ms.", "",
        "Instructions are guest instructions executed between the agent's run markers (targets/qemu_insn.c), median "
        "over the counted runs; spread = (max - min) / median. They count which kernels the runtime picked for the "
        "emulated CPU, not cycles: onnxruntime chooses by features (A53 = A72 without dot product, A76 with it), "
        "XNNPACK (LiteRT) also by core type (its Cortex-A53-tuned kernels: A53 != A72 though both lack dot "
        "product). Each run includes the agent's Python side of a call (feed checks; for TFLite the float->int8 "
        "input quantization and output dequantization, ~140 k instructions here): what a Python caller pays. The "
        "spread comes from that side too: a few thousand instructions at fixed run positions, the same in every "
        "process (PYTHONHASHSEED=0), so two processes give the same counts. "
        "The wall-time ratio is emulated wall p50 / host wall p50: it is not a slow-down factor of any real device, "
        "and it changes with the model and the runtime. 'same as host' compares the outputs with the host's for "
        "the same file (golden vectors with atol = rtol = 0).", "",
        "| arch | qemu cpu | format | instructions / inference | spread | emulated wall p50 ms | wall vs host | "
        "same as host |", "|---|---|---|---|---|---|---|---|", *rows, "",
        "Reproduce: `python tools/bench_qemu.py` (sets up `qemu-arm64` once: about 10-30 s and 330 MiB under "
        "$XDG_CACHE_HOME/edgepipe/devices)."])
    write_section(args.out, body, MARKS)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
