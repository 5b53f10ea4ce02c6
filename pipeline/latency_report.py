"""On-device latency report: a target's profile records -> latency.md beside its bundle, one PNG with a latency
histogram and CDF per profiled part (matplotlib), and the rows of the release's side-by-side latency table.

Emulated devices never report latency: their records carry `emulated_wall_ms` (named as such) and, where the
emulator can count them, instructions retired per inference, which repeat exactly from run to run.
"""
from __future__ import annotations

import io

_PERCENTILES = ("p50", "p90", "p99", "mean", "min", "max", "std")


def profile_parts(result) -> dict[str, dict]:
    """What it does: a target result -> {part name: profile record} ("model" for a fused graph; one per component)."""
    if getattr(result, "components", None):
        return {name: c["profile"].meta for name, c in result.components.items() if c.get("profile") is not None}
    return {"model": result.profile.meta} if getattr(result, "profile", None) is not None else {}


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 1024 / 1024:.1f} MiB"


def device_line(facts: dict | None) -> str:
    """What it does: a manifest's device section -> one line: arch, CPU, cores, int8 class, OS, emulated."""
    if not facts:
        return "device: unknown"
    emu = f", EMULATED ({facts.get('emulator') or 'emulator'})" if facts.get("emulated") else ""
    return (f"{facts.get('arch')} {facts.get('cpu_model')}, {facts.get('cores')} cores, int8 "
            f"{facts.get('int8_class')}, {facts.get('os') or 'unknown OS'}, via {facts.get('transport')}{emu}")


def part_row(name: str, rec: dict) -> dict:
    """What it does: one profile record -> the figures a table shows (latency or, emulated, the cost figure)."""
    lat = rec.get("latency_ms") or {}
    emu = rec.get("emulated_wall_ms") or {}
    return {"part": name, "runtime": f"{rec.get('runtime', '?')} {rec.get('runtime_version', '')}".strip(),
            "threads": rec.get("threads"), "emulated": bool(rec.get("emulated")),
            **{k: lat.get(k) for k in _PERCENTILES}, "load_ms": rec.get("load_ms"),
            "peak_rss_bytes": rec.get("peak_rss_bytes"), "iterations": rec.get("iterations"),
            "emulated_p50_ms": emu.get("p50"), "instructions": (rec.get("instructions") or {}).get("per_inference"),
            "on_device": (rec.get("on_device_verification") or {}).get("summary")}


def latency_md(target: str, device: dict | None, parts: dict[str, dict], picture: str | None) -> str:
    """What it does: a target's device facts + profile records -> latency.md (markdown)."""
    lines = [f"# Latency of {target}", "", f"Device: {device_line(device)}", ""]
    rows = [part_row(n, r) for n, r in parts.items()]
    real = [r for r in rows if not r["emulated"]]
    if real:
        lines += ["| part | runtime | threads | p50 ms | p90 ms | p99 ms | mean ms | min ms | max ms | load ms | "
                  "peak RSS | runs |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['runtime']} | {r['threads']} | {_ms(r['p50'])} | {_ms(r['p90'])} | "
                  f"{_ms(r['p99'])} | {_ms(r['mean'])} | {_ms(r['min'])} | {_ms(r['max'])} | {_ms(r['load_ms'])} | "
                  f"{_mib(r['peak_rss_bytes'])} | {r['iterations']} |" for r in real]
    emulated = [r for r in rows if r["emulated"]]
    if emulated:
        lines += ["", "**Emulated device: these are not latencies.** Emulated wall time is 100-2000x native and "
                  "varies with the model; the repeatable cost figure is instructions retired per inference.", "",
                  "| part | runtime | instructions / inference | emulated wall p50 ms |", "|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['runtime']} | {r['instructions'] if r['instructions'] is not None else '-'} "
                  f"| {_ms(r['emulated_p50_ms'])} |" for r in emulated]
    checked = [r for r in rows if r["on_device"]]
    if checked:
        lines += ["", "## Verified on the device", "",
                  "Eval samples run by the agent where the target runs, compared with the fp32 reference and with "
                  "the build host's outputs for the same file (differences in output-quantization steps).", ""]
        lines += [f"- {r['part']}: {r['on_device']}" for r in checked]
    for name, rec in parts.items():
        ops = rec.get("op_profile") or {}
        if ops and not ops.get("available", True):
            lines += ["", f"Per-op profile of {name}: not available ({ops.get('reason', 'no reason given')})."]
        if ops.get("top"):
            lines += ["", f"## Slowest ops of {name} ({ops.get('source', 'runtime profiler')})", "",
                      "| op | type | share | ms per run |", "|---|---|---|---|"]
            lines += [f"| {o['name']} | {o.get('type', '')} | {o['share'] * 100:.1f} % | {_ms(o.get('ms'))} |"
                      for o in ops["top"]]
    if picture:
        lines += ["", f"![latency histogram and CDF]({picture})"]
    return "\n".join(lines) + "\n"


def latency_png(target: str, parts: dict[str, dict]) -> bytes | None:
    """What it does: profile records with per-run samples (`samples_ms`) -> a PNG, one row per part: histogram and
    empirical CDF with p50/p90/p99 marked; None when no part has samples (emulated parts are left out)."""
    parts = {n: r for n, r in parts.items() if r.get("samples_ms") and not r.get("emulated")}
    if not parts:
        return None
    from matplotlib.figure import Figure  # a bare Figure renders to a file without pyplot or a backend switch

    import numpy as np

    fig = Figure(figsize=(9, 2.6 * len(parts)), dpi=100)
    axes = fig.subplots(len(parts), 2, squeeze=False)
    for row, (name, rec) in enumerate(parts.items()):
        ms = np.sort(np.asarray(rec["samples_ms"], dtype=np.float64))
        hist, cdf = axes[row]
        # the view ends a little past p99 so one slow outlier does not squash the rest; the title says so
        hi = float(min(ms[-1], np.percentile(ms, 99) * 1.5 if len(ms) > 1 else ms[-1])) or 1.0
        off = int((ms > hi).sum())
        hist.hist(ms[ms <= hi], bins=min(40, max(5, len(ms) // 5)), color="#4e79a7")
        hist.set_xlim(float(ms[0]) * 0.95, hi * 1.02)
        cdf.set_xlim(float(ms[0]) * 0.95, hi * 1.02)
        note = f"; {off} slower run(s) off the right edge, max {ms[-1]:.3f} ms" if off else ""
        hist.set_title(f"{name}: {len(ms)} runs{note}", fontsize=9)
        hist.set_xlabel("ms per run", fontsize=8)
        cdf.plot(ms, np.arange(1, len(ms) + 1) / len(ms), color="#e15759")
        for q in (50, 90, 99):
            v = float(np.percentile(ms, q))
            cdf.axvline(v, color="#999999", linewidth=0.8)
            cdf.text(v, 0.05 + 0.3 * (q == 90) + 0.6 * (q == 99), f"p{q}", fontsize=7)
        cdf.set_ylim(0, 1)
        cdf.set_xlabel("ms per run", fontsize=8)
        cdf.set_title("cumulative share of runs", fontsize=9)
    fig.suptitle(target, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def release_latency_table(entries: list[dict]) -> list[dict]:
    """What it does: index.json target entries (with their `latency_parts`) -> one row per target and part for the
    report's side-by-side table (device, runtime, p50/p90/p99 or the emulated cost figure)."""
    rows = []
    for e in entries:
        for name, rec in (e.get("latency_parts") or {}).items():
            rows.append({"target": e["target"], "device": device_line(e.get("device")), **part_row(name, rec)})
    return rows
