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
