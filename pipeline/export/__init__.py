"""Exporters: torch artifacts -> ONNX (+ int8 QDQ), OpenVINO IR (+ NNCF int8), TFLite (fp32/fp16/full int8)."""
from __future__ import annotations

from ..errors import ConfigError


def keep_float_entries(release, target) -> list[str]:
    """Model-level (all formats, then this format) then target-level keep_float entries, de-duplicated."""
    out: list[str] = []
    model = release.model
    entries = list(model.keep_float) + list(model.keep_float_by_format.get(target.format, []))
    for entry in entries + list(target.quantization.keep_float):
        if entry not in out:
            out.append(entry)
    return out


def keep_float_patterns(ctx) -> list[str]:
    """What it does: a stage context -> keep_float_entries() of its release and target."""
    return keep_float_entries(ctx.release, ctx.target)


def keep_float_in_component(ctx, patterns: list[str], names, types) -> list[str]:
    """What it does: keep_float entries + this graph's op names and types -> the entries to apply. A fused graph
    gets all of them (unmatched ones stay errors); a component gets those that match something in it, because
    model.keep_float names nodes of the whole model and most of them live in other components (an entry that
    matches no component at all is an error too: check_keep_float_applied)."""
    if ctx.component == "model":
        return patterns
    names, types = list(names), set(types)
    return [p for p in patterns if p in types or any(n.startswith(p) for n in names)]


def quantizer_key(ctx) -> dict:
    """What it does: a quantize stage's context -> its cache key: quantization and calibration settings, keep_float
    entries, model.kept_float_weights when not float32 (so keys without it stay as they were), the component."""
    key = {"quantization": ctx.target.quantization.stage_settings(),
           "calibration": ctx.target.calibration.model_dump(), "keep_float": keep_float_patterns(ctx)}
    if ctx.release.model.kept_float_weights != "float32":
        key["kept_float_weights"] = ctx.release.model.kept_float_weights
    if getattr(ctx, "device", None) is not None:  # int8 settings resolve from the device's int8 arithmetic
        key["device"] = {"arch": ctx.device.arch, "int8": ctx.device.int8_class}
    return component_key(ctx, key)


def symmetric_int8(w, axis: int):
    """What it does: a float weight + its output-channel axis -> (int8 values, float32 scale per channel) on the
    grid every int8 toolchain here uses: q in [-127, 127], step max|w|/127 per channel (all-zero channel: 1)."""
    import numpy as np

    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=other) / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8), scale


def component_key(ctx, config: dict) -> dict:
    """What it does: a quantize stage's config -> the same, naming the component for component graphs (whose
    artifacts record the keep_float entries they applied); fused cache keys stay as they were."""
    if ctx.component != "model":
        config["component"] = ctx.component
    return config


def record_applied(ctx, meta: dict, applied: list[str]) -> dict:
    """What it does: a component's quantized-artifact meta -> the same plus the keep_float entries it applied."""
    if ctx.component != "model":
        meta["keep_float_entries"] = list(applied)
    return meta


def check_keep_float_applied(release, target, components: dict[str, dict]) -> None:
    """What it does: one components-mode int8 target's quantized parts -> ConfigError (one line) naming the first
    keep_float entry that no component applied: it would otherwise be silently ignored."""
    applied = set()
    for part in components.values():
        applied.update(part["model"].meta.get("keep_float_entries", ()))
    for entry in keep_float_entries(release, target):
        if entry not in applied:
            raise ConfigError(f"keep_float entry '{entry}' (model.keep_float, model.keep_float_by_format or "
                              f"quantization.keep_float of target '{target.name}') matches no node or op type in any "
                              f"component ({', '.join(components)}); fix or remove it")
