"""Human-facing output: build results -> the console summary table, report.html (with a latency chart) and
each bundle's README.md."""
from __future__ import annotations

import html

from .formats import FORMAT_NAMES, FORMATS

COLUMNS = ["target", "format", "precision", "size", "accuracy", "drop (pt)", "agreement", "cosine",
           "p50 ms", "p90 ms", "status"]


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def summary_rows(entries: list[dict]) -> list[list[str]]:
    """One row per target from index.json entries."""
    rows = []
    for e in entries:
        v, lat = e.get("verification") or {}, e.get("latency_ms") or {}
        cos = min((o["cosine_mean"] for o in v.get("outputs", {}).values()), default=None)
        rows.append([
            e["target"], e["format"], e["precision"], _fmt_size(e.get("model_size_bytes")),
            f"{v['accuracy'] * 100:.2f}%" if "accuracy" in v else "-",
            f"{v['accuracy_drop_pt']:+.2f}" if "accuracy_drop_pt" in v else "-",
            f"{v['agreement'] * 100:.2f}%" if "agreement" in v else "-",
            f"{cos:.5f}" if cos is not None else "-",
            f"{lat['p50']:.3f}" if "p50" in lat else "-",
            f"{lat['p90']:.3f}" if "p90" in lat else "-",
            e["status"],
        ])
    return rows


def _metrics_text(m: dict) -> str:
    parts = [f"drop {m['accuracy_drop_pt']:+.2f} pt"] if m.get("accuracy_drop_pt") is not None else []
    parts.append(f"agreement {m['agreement'] * 100:.2f}%")
    if m.get("cosine_min") is not None:
        parts.append(f"cosine {m['cosine_min']:.5f}")
    return ", ".join(parts)


def sensitivity_line(sens: dict | None) -> str | None:
    """What it does: a target's sensitivity record (fallback.py) -> one line: the worst layers, the gate that failed
    with its value, the layers kept float automatically and the metrics after; None without the pass."""
    if not sens:
        return None
    worst = ", ".join(f"{r['node']} ({r['cost']:.3g})" for r in sens["ranking"][:3]) or "no candidate"
    before = sens["before"]
    if before["passed"]:
        return f"sensitivity: gates passed without keeping layers float; worst layers: {worst}"
    head = f"sensitivity: gates failed ({'; '.join(before['reasons'])}; {_metrics_text(before)})"
    if not sens["auto_keep_float"]:
        last = sens["attempts"][-1] if sens["attempts"] else {}
        return f"{head}; fallback kept nothing float ({last.get('error', 'no candidate layers')})"
    layers = ", ".join(sens["auto_keep_float"])
    return (f"{head}; kept {len(sens['auto_keep_float'])} layer(s) float automatically ({layers}); after: "
            f"{_metrics_text(sens['after'])} - {'passed' if sens['passed'] else 'still failing'}")


def stage_times(records) -> list[dict]:
    """What it does: the build's stage records -> per stage name (slowest first): runs, cache hits, seconds spent
    running it (summed over runs; stages in parallel overlap in wall time) and its slowest run."""
    table: dict[str, dict] = {}
    for r in records:
        row = table.setdefault(r.stage, {"stage": r.stage, "runs": 0, "cached": 0, "seconds": 0.0,
                                         "slowest_s": 0.0, "slowest": ""})
        if r.cached:
            row["cached"] += 1
            continue
        row["runs"] += 1
        row["seconds"] += r.seconds
        if r.seconds >= row["slowest_s"]:
            row["slowest_s"], row["slowest"] = r.seconds, r.target
    rows = sorted(table.values(), key=lambda x: (-x["seconds"], x["stage"]))
    return [{**row, "seconds": round(row["seconds"], 2), "slowest_s": round(row["slowest_s"], 2)} for row in rows]


def timeline(records, t0: float) -> list[dict]:
    """What it does: stage records + the build's start (epoch s) -> the stages that ran, as {"stage", "target",
    "start_s", "seconds", "lane"} (lane = which worker process, numbered in order of first use)."""
    lanes: dict = {}
    out = []
    for r in sorted((r for r in records if not r.cached and r.start is not None), key=lambda r: r.start):
        lane = lanes.setdefault(r.worker, len(lanes))
        out.append({"stage": r.stage, "target": r.target, "start_s": round(r.start - t0, 2),
                    "seconds": round(r.seconds, 2), "lane": lane})
    return out


def timeline_svg(items: list[dict], wall_s: float) -> str:
    """What it does: timeline() items -> an SVG Gantt chart, one row per worker, stages coloured by name (what
    kept the build busy, and where a core sat idle)."""
    if not items:
        return ""
    lanes = max(i["lane"] for i in items) + 1
    width, row, left = 900, 26, 70
    scale = (width - left - 10) / max(wall_s, max(i["start_s"] + i["seconds"] for i in items), 1e-9)
    names = sorted({i["stage"] for i in items})
    palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"]
    colour = {n: palette[k % len(palette)] for k, n in enumerate(names)}
    height = lanes * row + 30 + 18 * ((len(names) + 4) // 5)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
             f'font-family="sans-serif">']
    for lane in range(lanes):
        parts.append(f'<text x="4" y="{lane * row + 17}">worker {lane + 1}</text>')
    for i in items:
        x, w = left + i["start_s"] * scale, max(i["seconds"] * scale, 1.0)
        tip = html.escape(f"{i['stage']} {i['target']}: {i['seconds']:.1f} s from {i['start_s']:.1f} s")
        parts.append(f'<rect x="{x:.1f}" y="{i["lane"] * row + 4}" width="{w:.1f}" height="{row - 8}" '
                     f'fill="{colour[i["stage"]]}"><title>{tip}</title></rect>')
    axis_y = lanes * row + 12
    for k in range(0, int(wall_s) + 1, max(10, int(wall_s / 10) // 10 * 10 or 10)):
        parts.append(f'<text x="{left + k * scale:.1f}" y="{axis_y}">{k}s</text>')
    for k, n in enumerate(names):
        x, y = left + (k % 5) * 165, axis_y + 16 + 18 * (k // 5)
        parts.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour[n]}"/>'
                     f'<text x="{x + 14}" y="{y}">{html.escape(n)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def print_stage_times(console, rows: list[dict], wall_s: float, jobs: int) -> None:
    """What it does: stage_times() rows -> a console table, so the next slow stage is visible."""
    from rich.table import Table

    busy = sum(r["seconds"] for r in rows)
    table = Table(title=f"stage times: {busy:.1f} s of stage work in {wall_s:.1f} s wall with {jobs} job(s)")
    for col in ("stage", "ran", "cached", "seconds", "share", "slowest run"):
        table.add_column(col, justify="left" if col in ("stage", "slowest run") else "right")
    for r in rows:
        share = f"{100 * r['seconds'] / busy:.0f}%" if busy > 0 else "-"
        slowest = f"{r['slowest_s']:.1f} s {r['slowest']}" if r["runs"] else "-"
        table.add_row(r["stage"], str(r["runs"]), str(r["cached"]), f"{r['seconds']:.1f}", share, slowest)
    console.print(table)


def _latency_html(entries: list[dict]) -> str:
    """What it does: index entries -> the report's on-device latency section: every target and part side by side,
    with the device it ran on; emulated devices show instructions per inference, never a latency."""
    from .latency_report import release_latency_table

    rows = release_latency_table(entries)
    if not rows:
        return ""

    def cell(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(r['target'])}</td><td style='text-align:left'>"
        f"{html.escape(r['part'])}</td><td style='text-align:left'>{html.escape(r['device'])}</td>"
        f"<td style='text-align:left'>{html.escape(r['runtime'])}</td>"
        + ("<td colspan='4'>emulated: not a latency</td>" if r["emulated"] else
           f"<td>{cell(r['p50'])}</td><td>{cell(r['p90'])}</td><td>{cell(r['p99'])}</td><td>{cell(r['load_ms'])}</td>")
        + f"<td>{cell(r['peak_rss_bytes'] / 1048576 if r['peak_rss_bytes'] else None, '{:.1f}')}</td>"
        f"<td>{cell(r['instructions'], '{:,}')}</td><td style='text-align:left'>{html.escape(r['on_device'] or '-')}"
        "</td></tr>" for r in rows)
    return ("<h2>On-device latency</h2><p>Each bundle's latency.md has the histogram, CDF and slowest ops. "
            "Emulated devices report instructions retired per inference (repeatable), not time.</p>"
            "<table><tr><th>target</th><th>part</th><th>device</th><th>runtime</th><th>p50 ms</th><th>p90 ms</th>"
            f"<th>p99 ms</th><th>load ms</th><th>peak RSS MiB</th><th>instructions</th><th>verified on the device</th>"
            f"</tr>{body}</table>\n")


def _device_settings_html(entries: list[dict]) -> str:
    """What it does: index entries -> the report's section on int8 settings resolved from each target's device
    (with the reason), and the runtime options its bundle is opened with."""
    rows = []
    for e in entries:
        for s in e.get("device_settings") or []:
            rows.append(f"<tr><td style='text-align:left'>{html.escape(e['target'])}</td>"
                        f"<td style='text-align:left'>{html.escape(str(s.get('setting', '')))}</td>"
                        f"<td style='text-align:left'>{html.escape(str(s.get('value', '')))}</td>"
                        f"<td style='text-align:left'>{html.escape(str(s.get('reason', '')))}</td></tr>")
        if e.get("runtime_options"):
            opts = ", ".join(f"{k}={v}" for k, v in e["runtime_options"].items())
            rows.append(f"<tr><td style='text-align:left'>{html.escape(e['target'])}</td><td style='text-align:left'>"
                        f"runtime options</td><td style='text-align:left'>{html.escape(opts)}</td>"
                        "<td style='text-align:left'>opened with these wherever it runs (manifest)</td></tr>")
    if not rows:
        return ""
    return ("<h2>Device settings</h2><p>Settings resolved from each target's device (never from the build host), "
            "and why.</p><table><tr><th>target</th><th>setting</th><th>value</th><th>reason</th></tr>"
            f"{''.join(rows)}</table>\n")


def _slowest(row: dict) -> str:
    return f"{html.escape(row['slowest'])} ({row['slowest_s']:.1f} s)" if row["runs"] else "-"


def _stage_times_html(build: dict | None) -> str:
    if not build or not build.get("stage_times"):
        return ""
    rows = "".join(f"<tr><td style='text-align:left'>{html.escape(r['stage'])}</td><td>{r['runs']}</td>"
                   f"<td>{r['cached']}</td><td>{r['seconds']:.1f}</td>"
                   f"<td style='text-align:left'>{_slowest(r)}</td></tr>"
                   for r in build["stage_times"])
    return (f"<h2>Build time</h2><p>{build['wall_s']:.1f} s wall with {build['jobs']} job(s); seconds are each "
            "stage's own run time summed over its runs (parallel runs overlap).</p><table><tr><th>stage</th>"
            f"<th>ran</th><th>cached</th><th>seconds</th><th>slowest run</th></tr>{rows}</table>\n"
            f"<p>Timeline of the stages that ran, per worker process:</p>"
            f"{timeline_svg(build.get('timeline') or [], build['wall_s'])}\n")


def print_summary(console, index: dict) -> None:
    from rich.table import Table

    table = Table(title=f"edgepipe release {index['release']}  (fp32 torch eval accuracy "
                        f"{index['reference_accuracy'] * 100:.2f}%)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("target", "format", "precision", "status") else "right")
    for row, entry in zip(summary_rows(index["targets"]), index["targets"]):
        style = "green" if entry["status"] == "passed" else "red"
        table.add_row(*row[:-1], f"[{style}]{row[-1]}[/{style}]")
    console.print(table)
    for entry in index["targets"]:
        line = sensitivity_line(entry.get("sensitivity"))
        if line:
            console.print(f"{entry['target']}: {line}", markup=False)
    for entry in index["targets"]:
        for reason in entry.get("reasons", []):
            console.print(f"[red]{entry['target']}[/red]: {reason}")


def _latency_svg(entries: list[dict]) -> str:
    bars = [(e["target"], (e.get("latency_ms") or {}).get("p50")) for e in entries]
    bars = [(t, v) for t, v in bars if v is not None]
    if not bars:
        return "<p>No latency measured.</p>"
    top = max(v for _, v in bars) or 1.0
    row_h, width, label_w = 26, 420, 190
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 90}" height="{row_h * len(bars) + 10}">']
    for i, (target, value) in enumerate(bars):
        y = 5 + i * row_h
        w = max(2.0, width * value / top)
        parts.append(f'<text x="0" y="{y + 16}" font-size="13">{html.escape(target)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="18" fill="#4a7bd0"/>')
        parts.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 16}" font-size="12">{value:.3f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def _study_cells(recipe: dict, precision: str, formats: list[str], base: dict) -> list[str]:
    cells = []
    for fmt in formats:
        t = next((t for t in recipe["targets"].values() if t["format"] == fmt and t["precision"] == precision), None)
        b = base.get(fmt) or {}
        if t is None or t["status"] != "passed" and t["accuracy"] is None:
            cells += ["-", "-", "-", "-"] if t is None else [f"failed: {'; '.join(t['reasons'])[:80]}", "", "", ""]
            continue
        size = t["size_bytes"]
        smaller = f" ({b['size_bytes'] / size:.1f}× smaller)" if size and b.get("size_bytes") else ""
        p50, bp50 = t["p50_ms"], b.get("p50_ms")
        cells += [f"{size / 1024:.1f}{smaller}" if size else "-",
                  (f"{t['accuracy'] * 100:.2f}% ({t['accuracy_drop_pt']:+.2f})"
                   + ("" if t["status"] == "passed" else ", gate failed")) if t["accuracy"] is not None else "-",
                  f"{p50:.3f}" if p50 else "-", f"{bp50 / p50:.2f}×" if p50 and bp50 else "-"]
    return cells


def study_table(study: list[dict]) -> tuple[list[str], list[list[str]]]:
    """What it does: index.json's compression_study -> (header, rows) of the seed's table: one row per recipe and
    precision; parameters, MACs, and per format size KiB (x smaller than the fp32 baseline), eval accuracy (drop
    vs fp32 torch), 1-thread p50 ms and speed-up over the fp32 baseline of that format."""
    formats = sorted({t["format"] for r in study for t in r["targets"].values()},
                     key=lambda f: FORMAT_NAMES.index(f) if f in FORMAT_NAMES else len(FORMAT_NAMES))
    base_recipe = next((r for r in study if r["recipe"] == "baseline"), study[0])
    base = {t["format"]: t for t in base_recipe["targets"].values() if t["precision"] == "fp32"}
    p0 = base_recipe["parameters"]
    header = ["recipe", "steps", "precision", "parameters", "MACs"]
    for fmt in formats:
        header += [f"{fmt} KiB", f"{fmt} accuracy (drop pt)", f"{fmt} p50 ms", f"{fmt} speed-up"]
    rows = []
    for r in study:
        for precision in ("fp32", "int8"):
            if not any(t["precision"] == precision for t in r["targets"].values()):
                continue
            params = r["parameters"]
            ratio = f" ({p0 / params:.1f}× fewer)" if params and p0 and params != p0 else ""
            rows.append([r["recipe"], " → ".join(r["steps"]) or "none", precision,
                         f"{params:,}{ratio}" if params else "-", f"{r['macs']:,}" if r.get("macs") else "-",
                         *_study_cells(r, precision, formats, base)])
    return header, rows


def _study_html(study: list[dict] | None) -> str:
    if not study:
        return ""
    header, rows = study_table(study)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return ("<h2>Compression study</h2><p>Every recipe built in this run from the same trained model; sizes and "
            "speed-ups are against the uncompressed fp32 model of the same format; accuracy drop is against the "
            f"fp32 torch model.</p><table><tr>{head}</tr>{body}</table>\n")


def report_html(index: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for row, entry in zip(summary_rows(index["targets"]), index["targets"]):
        cls = "ok" if entry["status"] == "passed" else "bad"
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in row)
        body.append(f'<tr class="{cls}">{cells}</tr>')
    reasons = "".join(f"<li><b>{html.escape(e['target'])}</b>: {html.escape(r)}</li>"
                      for e in index["targets"] for r in e.get("reasons", []))
    sens = [(e["target"], sensitivity_line(e.get("sensitivity"))) for e in index["targets"]]
    sens_items = "".join(f"<li><b>{html.escape(t)}</b>: {html.escape(line)}</li>" for t, line in sens if line)
    sens_html = f"<h2>Sensitivity pass</h2><ul>{sens_items}</ul>\n" if sens_items else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgepipe {html.escape(index['release'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} tr.ok td:last-child{{color:#080}}
tr.bad td:last-child{{color:#c00}}</style></head><body>
<h1>Release {html.escape(index['release'])}</h1>
<p>Model factory <code>{html.escape(index['model']['factory'])}</code>, fp32 torch eval accuracy
{index['reference_accuracy'] * 100:.2f}% on {index['eval_samples']} held-out samples. Git commit
<code>{html.escape(index['git_commit'])}</code>.</p>
<table><tr>{head}</tr>{''.join(body)}</table>
<h2>Failures</h2><ul>{reasons or '<li>none</li>'}</ul>
{sens_html}{_study_html(index.get("compression_study"))}{_device_settings_html(index["targets"])}{_latency_html(index["targets"])}{_stage_times_html(index.get("build"))}<h2>Latency p50 per target (1 run of the agent, warm-up excluded)</h2>{_latency_svg(index['targets'])}
</body></html>
"""


LOAD_SNIPPETS = {name: f.load_snippet for name, f in FORMATS.items()}


def _components_readme(manifest: dict) -> str:
    """What it does: a components manifest -> README lines naming each part's file and feeds, in run order
    (the load snippet shows one file; a device loads each part's main file the same way)."""
    section = manifest.get("components")
    if not section:
        return ""
    lines = []
    for name in section["order"]:
        part = section["parts"][name]
        feeds = ", ".join(f"`{k}` <- `{r}`" for k, r in part["feeds_from"].items())
        lines.append(f"- `{name}`: `{part['main_file']}`, inputs from {feeds}")
    return "\n## Components (run in this order; load each main file as above)\n\n" + "\n".join(lines) + "\n"


def _emulated_cost(rec: dict) -> str:
    """What it does: a latency record without latency_ms -> the emulated device's cost figure, or "not measured"."""
    if not rec.get("emulated"):
        return "not measured"
    count = (rec.get("instructions") or {}).get("per_inference")
    wall = (rec.get("emulated_wall_ms") or {}).get("p50")
    figure = f"{count:,} instructions per inference" if count is not None else "no instruction count"
    return (f"not measured: emulated device ({rec.get('emulator') or 'emulator'}); {figure}"
            + (f", emulated wall time p50 {wall:.3f} ms (not a latency)" if wall is not None else ""))


def bundle_readme(manifest: dict) -> str:
    v = manifest["verification"]
    lat = (manifest.get("latency") or {}).get("latency_ms")
    inputs = "\n".join(
        f"| `{t['name']}` | {t['dtype']} | {list(t['shape'])} | {t['layout']} | {t.get('modality', '')} |"
        for t in manifest["iospec"]["inputs"])
    outputs = "\n".join(f"| `{t['name']}` | {t['dtype']} | {list(t['shape'])} |" for t in manifest["iospec"]["outputs"])
    # a device's own benchmark tool (adb, no Python) may report a mean without percentiles: say so, invent nothing
    figures = (f"p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms" if lat and "p90" in lat else
               f"mean {lat['mean']:.3f} ms (no percentiles from {manifest['latency'].get('measured_by', 'the tool')})"
               if lat else "")
    latency = (f"{figures} ({manifest['latency']['threads']} thread(s), "
               f"{manifest['latency']['runtime']} {manifest['latency']['runtime_version']}, "
               f"{manifest['latency'].get('cpu_model', 'unknown CPU')})" if lat else
               _emulated_cost(manifest.get("latency") or {}))
    acc = (f"{v['accuracy'] * 100:.2f}% (drop {v['accuracy_drop_pt']:+.2f} pt vs fp32 torch)"
           if "accuracy" in v else "n/a")
    components = _components_readme(manifest)
    sens = sensitivity_line((manifest.get("quantization") or {}).get("sensitivity"))
    sens = f"\n- {sens}" if sens else ""
    return f"""# {manifest['release']} / {manifest['target']}

{manifest['format']} {manifest['precision']} model for `{manifest['runtime']}`.

## Load it

```python
{LOAD_SNIPPETS[manifest['format']]}
# feeds: one array per input below, batch 1, preprocessed as manifest.json "iospec" says
```
{components}
Self-test: `edgepipe verify <this bundle>` re-hashes every file and runs the vectors in `golden/`.

## Inputs

| name | dtype | shape | layout | modality |
|---|---|---|---|---|
{inputs}

## Outputs

| name | dtype | shape |
|---|---|---|
{outputs}

## Measured

- eval accuracy: {acc}; top-1 agreement with fp32: {v['agreement'] * 100:.2f}% on {v['samples']} samples
- latency: {latency}{sens}

## Provenance

git commit `{manifest['git_commit']}`, config hash `{manifest['config_hash'][:16]}`, calibration fingerprint
`{(manifest['calibration_fingerprint'] or '-')[:16]}`. Tool versions and file hashes: `manifest.json`.
"""
