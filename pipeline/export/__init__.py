"""Exporters: torch artifacts -> ONNX (+ int8 QDQ), OpenVINO IR (+ NNCF int8), TFLite (fp32/fp16/full int8)."""
from __future__ import annotations


def keep_float_patterns(ctx) -> list[str]:
    """Model-level then target-level keep_float entries (ONNX node-name prefixes or op types), de-duplicated."""
    out: list[str] = []
    for entry in list(ctx.release.model.keep_float) + list(ctx.target.quantization.keep_float):
        if entry not in out:
            out.append(entry)
    return out
