"""Format benchmark: reference models x {onnx, openvino, tflite} x {fp32, int8} (+ the toolchains' plain
defaults) -> BENCHMARKS.md section with size, conversion time, fidelity and 1-thread latency, from one run.

    python tools/bench_formats.py                 # both tiny variants, fresh cache, writes BENCHMARKS.md
    python tools/bench_formats.py --models tiny   # one model

Latency is measured by the same agent the targets use, one target after another in this one process run, so
the ratios (int8 vs fp32 on one runtime) are comparable; absolute numbers move with machine load.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.cache import Cache  # noqa: E402
from pipeline.config import ReleaseConfig, load_profile, load_release  # noqa: E402
from pipeline.plan import make_plan  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.runner import Runner  # noqa: E402

BENCH_PROFILES = ROOT / "tools" / "bench_profiles"
OURS = ["host-onnx-fp32", "host-onnx-int8", "host-openvino-fp32", "host-openvino-int8",
        "host-tflite-fp32", "host-tflite-int8"]
# model -> (factory params, keep_float entries added to the release's model-level list, per-format extras)
MODELS = {
    "tiny": ({"fusion": "concat"}, [], {}),
    # Attention scores + the -1e4 padding bias share one int8 range (step ~40), flattening attention: the score
    # Add and the Softmax stay float (measured: 14.2 pt drop in ORT int8 otherwise, -0.3 pt with them float).
    "tiny-transformer": ({"fusion": "concat", "text_tower": "transformer"},
                         ["/text/layers.0/Add", "/text/layers.1/Add", "/text/layers.0/Softmax",
                          "/text/layers.1/Softmax"],
                         # TFLite's int8 DIV/attention kernels break this tower (div.cc zero-point abort, then
                         # 51 % agreement with Erf float); the whole text tower stays float there, declared.
                         {"tflite": ["/text/"]}),
}
MARK_START, MARK_END = "<!-- bench_formats:start -->", "<!-- bench_formats:end -->"


def available(names: list[str]) -> list[str]:
    """Targets whose profile exists (ours in targets/profiles, baselines in tools/bench_profiles)."""
    out = []
    for name in names:
        path = BENCH_PROFILES / f"{name}.yaml"
        ref = str(path) if path.is_file() else name
        try:
            load_profile(ref, ROOT)
        except Exception:  # a format not built yet is reported as missing, not as a crash
            continue
        out.append(ref)
    return out


def build(model: str, targets: list[str], keep_float: bool, cache: Cache) -> tuple:
    base, base_dir = load_release(ROOT / "examples" / "tiny-mm.yaml")
    data = base.model_dump()
    data["release"] = f"bench-{model}"
    params, extra_keep, by_format = MODELS[model]
    data["model"]["params"] = params
    data["model"]["keep_float"] = data["model"]["keep_float"] + extra_keep if keep_float else []
    data["model"]["keep_float_by_format"] = by_format if keep_float else {}
    data["targets"] = targets
    cfg = ReleaseConfig.model_validate(data)
    plan = make_plan(cfg, base_dir)
    runner = Runner(cache, Progress(enabled=sys.stderr.isatty()), log=lambda m: print(m, flush=True))
    state = runner.run(plan)
    return state


def conversion_seconds(state, lineage) -> float:
    """Wall time of an export chain (stages shared with other targets count where first run)."""
    by_sha = {r.sha256: r.seconds for r in state.records if not r.cached}
    return sum(by_sha.get(a.sha256, 0.0) for a in lineage[1:])


def model_size(art) -> int:
    """Bytes of a model artifact's model files."""
    return sum(art.path(f).stat().st_size for f in art.files if f.endswith((".onnx", ".xml", ".bin", ".tflite")))


def rows_for(model: str, state, label_suffix: str = "") -> list[dict]:
    rows = []
    for result in state.targets:
        p = result.plan.profile
        row = {"model": model, "target": p.name + label_suffix, "format": p.format, "precision": p.precision,
               "status": result.status, "reasons": result.reasons}
        if result.model is not None:
            row["size"] = model_size(result.model)
            row["convert_s"] = conversion_seconds(state, result.lineage)
        if result.verification is not None:
            v = result.verification.meta
            row.update(accuracy=v.get("accuracy"), drop=v.get("accuracy_drop_pt"), agreement=v["agreement"],
                       cosine=min(o["cosine_mean"] for o in v["outputs"].values()))
        if result.profile is not None:
            row["p50"] = result.profile.meta["latency_ms"]["p50"]
        rows.append(row)
    return rows


def add_ratios(rows: list[dict], group: str = "model") -> None:
    """Speed-up and size of each row against the fp32 row of the same `group` (model, graph ...) and format."""
    fp32 = {(r[group], r["format"]): r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        base = fp32.get((r[group], r["format"]))
        if base and r.get("p50") and base.get("p50"):
            r["speedup"] = base["p50"] / r["p50"]
        if base and r.get("size") and base.get("size"):
            r["size_ratio"] = r["size"] / base["size"]


def fmt(v, spec: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def table(rows: list[dict]) -> str:
    head = ("| model | target | format | prec | size KiB | size vs fp32 | convert s | accuracy | drop pt | agreement "
            "| cosine | p50 ms (1 thr) | speed-up vs fp32 | status |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["target"], r["format"], r["precision"], fmt(r.get("size", 0) / 1024 if r.get("size") else None, ".1f"),
            fmt(r.get("size_ratio") * 100 if r.get("size_ratio") else None, ".0f", " %"), fmt(r.get("convert_s"), ".1f"),
            fmt(r.get("accuracy") * 100 if r.get("accuracy") is not None else None, ".2f", " %"),
            fmt(r.get("drop"), "+.2f"), fmt(r.get("agreement") * 100 if r.get("agreement") is not None else None, ".2f", " %"),
            fmt(r.get("cosine"), ".5f"), fmt(r.get("p50"), ".3f"), fmt(r.get("speedup"), ".2f", "×"),
            r["status"] + ("" if not r["reasons"] else ": " + "; ".join(r["reasons"])[:120]),
        ]) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_section(path: Path, body: str, marks: tuple[str, str] = (MARK_START, MARK_END)) -> None:
    """BENCHMARKS.md + body -> the file with the section between `marks` replaced (or appended)."""
    start, end = marks
    text = path.read_text() if path.exists() else "# Benchmarks\n\nGenerated by the tools in `tools/`; each section comes from one run.\n"
    section = f"{start}\n{body}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temp dir (real conversion times)")
    args = ap.parse_args()
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as tmp:
        cache = Cache(args.cache_dir or Path(tmp))
        for model in args.models.split(","):
            ours = available(OURS)
            rows += rows_for(model, build(model, ours, True, cache))
            defaults = available(["onnx-int8-defaults", "openvino-int8-defaults", "tflite-int8-defaults"])
            if defaults:
                names = {Path(d).stem for d in defaults}
                rows += [r for r in rows_for(model, build(model, defaults, False, cache)) if r["target"] in names]
    add_ratios(rows)
    body = "\n".join([
        "## Formats: size, fidelity and latency per format and precision (`tools/bench_formats.py`)",
        "",
        f"One run of `python tools/bench_formats.py` on {time.strftime('%Y-%m-%d')}, {cpu_model()}, "
        f"{platform.machine()}, Python {platform.python_version()}; {time.time() - start:.0f} s in all. "
        "Fidelity is measured against the fp32 torch model on the held-out eval split (600 samples); latency is "
        "the agent's p50 over 200 runs after 20 warm-up runs at 1 thread, batch 1. `*-defaults` rows are the "
        "same model quantized with the toolchain's plain defaults and without our model-level keep_float.",
        "",
        table(rows),
    ])
    write_section(args.out, body)
    print(body)


if __name__ == "__main__":
    main()
