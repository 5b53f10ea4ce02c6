"""Runtimes' own benchmark programs, for devices without Python: the agent's arguments -> the argv of LiteRT's
`benchmark_model` or onnxruntime's `onnxruntime_perf_test`, and their printed output -> the agent's latency record
(same keys: latency_ms, load_ms, peak_rss_bytes, iterations, golden, ...).

What these tools cannot do is said in the record, never filled in: they feed their own (random) inputs, so golden
vectors are not checked on the device (`golden.skipped` says why); `benchmark_model` prints no percentiles, so its
latency_ms has mean/min/max/std only; neither returns per-run samples.
"""
from __future__ import annotations

import argparse
import re

from pipeline.errors import TransportError

LITERT, ORT = "benchmark_model", "onnxruntime_perf_test"
_FORMAT_TOOL = {"tflite": LITERT, "onnx": ORT}
_NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)"


def tool_kind(binary: str) -> str:
    """What it does: an on-device benchmark binary path -> which tool it is, by its file name."""
    name = binary.rsplit("/", 1)[-1]
    if "benchmark_model" in name:
        return LITERT
    if "perf_test" in name:
        return ORT
    raise TransportError(f"benchmark_binary {binary!r}: not a known tool (LiteRT benchmark_model or "
                         "onnxruntime_perf_test, judged by its file name)")


def agent_args(argv: list) -> argparse.Namespace:
    """What it does: the agent's own argv (--model --format --threads --warmup --iterations --golden --option)
    -> its values, so a benchmark tool can run what the agent was asked to."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for flag in ("--model", "--format", "--golden"):
        parser.add_argument(flag, required=flag != "--golden")
    for flag, default in (("--threads", 1), ("--warmup", 10), ("--iterations", 50), ("--timing-sample", 0)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--option", action="append", default=[])
    try:
        args, _ = parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise TransportError(f"cannot run a benchmark tool for agent arguments {argv!r}: {exc}") from None
    return args


def tool_argv(binary: str, args: argparse.Namespace) -> list[str]:
    """What it does: the tool and the agent's values -> the tool's argv (threads, warm-up and runs as asked)."""
    kind = tool_kind(binary)
    if _FORMAT_TOOL.get(args.format) != kind:
        raise TransportError(f"benchmark_binary {binary!r} cannot run {args.format} models; the device has no "
                             f"Python for the agent either")
    if kind == LITERT:
        # min_secs 0: exactly the runs asked for (the tool otherwise runs at least one second's worth)
        return [binary, f"--graph={args.model}", f"--num_threads={args.threads}", f"--warmup_runs={args.warmup}",
                "--warmup_min_secs=0", f"--num_runs={args.iterations}", "--min_secs=0",
                "--report_peak_memory_footprint=true"]
    # -I: the tool makes its own inputs; -m times -r N: N timed runs; -x: intra-op threads
    return [binary, "-I", "-e", "cpu", "-m", "times", "-r", str(args.iterations), "-x", str(args.threads), args.model]


def _skipped_golden(kind: str) -> dict:
    return {"checked": 0, "passed": 0, "max_abs_err": None, "failures": [],
            "skipped": f"no Python on the device: {kind} feeds its own inputs, golden vectors were not checked there"}


def _base(kind: str, args: argparse.Namespace, runtime: str) -> dict:
    return {"ok": True, "format": args.format, "runtime": runtime, "runtime_version": f"unknown ({kind})",
            "runtime_config": {}, "threads": args.threads, "warmup": args.warmup, "iterations": args.iterations,
            "samples_ms": [], "measured_by": kind, "golden": _skipped_golden(kind), "inputs": [], "outputs": []}


def parse_benchmark_model(text: str, args: argparse.Namespace) -> dict:
    """What it does: LiteRT benchmark_model's log -> the agent's record. Its last `count=... avg=...` line (in
    microseconds) is the timed runs; `Init:` is load time; the peak memory footprint is in MB."""
    stats = None
    for line in text.splitlines():
        if "count=" in line and "avg=" in line:
            stats = dict(re.findall(r"([a-z_0-9]+)=" + _NUMBER, line))
    if stats is None:
        raise TransportError(f"benchmark_model printed no timing line: {' '.join(text.split())[-300:]}")
    latency = {"mean": float(stats["avg"]) / 1000}
    for key, name in (("min", "min"), ("max", "max"), ("std", "std"), ("median", "p50"), ("p50", "p50"),
                      ("p90", "p90"), ("p99", "p99")):
        if key in stats:
            latency[name] = float(stats[key]) / 1000
    record = _base(LITERT, args, "litert")
    record["latency_ms"] = {k: round(v, 6) for k, v in latency.items()}
    init = re.search(r"Init:\s*" + _NUMBER, text)
    record["load_ms"] = round(float(init.group(1)) / 1000, 6) if init else None
    peak = re.search(r"[Pp]eak memory footprint \(MB\)[^:]*:\s*" + _NUMBER, text)
    record["peak_rss_bytes"] = int(float(peak.group(1)) * 1024 * 1024) if peak else None
    record["peak_rss_source"] = "benchmark_model peak memory footprint" if peak else "not reported"
    if "count" in stats and int(float(stats["count"])) != args.iterations:
        record["iterations"] = int(float(stats["count"]))
    return record


def parse_perf_test(text: str, args: argparse.Namespace) -> dict:
    """What it does: onnxruntime_perf_test's report -> the agent's record (its latencies are in seconds;
    session creation is load time; peak working set is peak memory)."""
    def field(pattern: str) -> float | None:
        found = re.search(pattern + r"\s*:?\s*" + _NUMBER, text, flags=re.IGNORECASE)
        return float(found.group(1)) if found else None

    mean_ms = field(r"Average inference time cost")
    if mean_ms is None:
        raise TransportError(f"onnxruntime_perf_test printed no timing: {' '.join(text.split())[-300:]}")
    latency = {"mean": mean_ms}
    for name, label in (("min", "Min Latency"), ("max", "Max Latency"), ("p50", "P50 Latency"),
                        ("p90", "P90 Latency"), ("p99", "P99 Latency")):
        value = field(label)
        if value is not None:
            latency[name] = value * 1000  # seconds -> ms
    record = _base(ORT, args, "onnxruntime")
    record["latency_ms"] = {k: round(v, 6) for k, v in latency.items()}
    created = field(r"Session creation time cost")
    record["load_ms"] = round(created * 1000, 6) if created is not None else None
    peak = field(r"Peak working set size")
    record["peak_rss_bytes"] = int(peak) if peak is not None else None
    record["peak_rss_source"] = "onnxruntime_perf_test peak working set" if peak is not None else "not reported"
    runs = field(r"Total inference requests")
    if runs is not None:
        record["iterations"] = int(runs)
    return record


def parse_output(binary: str, text: str, args: argparse.Namespace) -> dict:
    """What it does: a tool's combined output -> the agent's record (TransportError when it holds no timing)."""
    return parse_benchmark_model(text, args) if tool_kind(binary) == LITERT else parse_perf_test(text, args)
