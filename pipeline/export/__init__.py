"""Exporters: torch artifacts -> ONNX (+ int8 QDQ), OpenVINO IR (+ NNCF int8), TFLite (fp32/fp16/full int8)."""
from __future__ import annotations


def keep_float_patterns(ctx) -> list[str]:
    """Model-level (all formats, then this format) then target-level keep_float entries, de-duplicated."""
    out: list[str] = []
    model = ctx.release.model
    entries = list(model.keep_float) + list(model.keep_float_by_format.get(ctx.target.format, []))
    for entry in entries + list(ctx.target.quantization.keep_float):
        if entry not in out:
            out.append(entry)
    return out


def keep_float_in_component(ctx, patterns: list[str], names, types) -> list[str]:
    """What it does: keep_float entries + this graph's op names and types -> the entries to apply. A fused graph
    gets all of them (unmatched ones stay errors); a component gets those that match something in it, because
    model.keep_float names nodes of the whole model and most of them live in other components."""
    if ctx.component == "model":
        return patterns
    names, types = list(names), set(types)
    return [p for p in patterns if p in types or any(n.startswith(p) for n in names)]
