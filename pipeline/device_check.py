"""Verification on the device: a profile's `verify_on_device: N` -> the first N eval samples run through the agent
where the target runs, compared with the fp32 reference (agreement, cosine, the target's gates) and with the
build host's outputs for the same artifact (bit-identical, or how many output-quantization steps apart).

The verify stage (on the build host) writes the set: `on_device/<part>/inputs.npz` (the samples in the artifact's
own layout: keys 'count', '<k>:<input>'), `host.npz` (its outputs, '<k>:<output>'), `reference.npz` (fp32), and
`labels.npy` where the split has labels. The profile stage pushes `inputs.npz` with the model, pulls the device's
outputs and calls `compare_on_device`. numpy only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_set(directory: Path, feeds: list[dict], host: dict[str, np.ndarray], reference: dict[str, np.ndarray],
              labels: np.ndarray | None) -> None:
    """What it does: N adapted feeds + host and fp32 outputs (leading sample axis, N first rows used) -> the set."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(feeds)
    arrays = {"count": np.asarray(n)}
    for k, sample in enumerate(feeds):
        arrays.update({f"{k}:{name}": np.asarray(v) for name, v in sample.items()})
    _savez(directory / "inputs.npz", arrays)
    _savez(directory / "host.npz", {f"{k}:{o}": v[k : k + 1] for o, v in host.items() for k in range(n)})
    _savez(directory / "reference.npz", {o: v[:n] for o, v in reference.items()})
    if labels is not None:
        np.save(directory / "labels.npy", np.asarray(labels[:n]), allow_pickle=False)


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as fh:  # np.savez on an open file: no ".npz" suffix games, no pickles
        np.savez(fh, **arrays)


def stack(npz_path: Path, names: list[str], count: int) -> dict[str, np.ndarray]:
    """What it does: an .npz with '<k>:<output>' keys -> {output: array [count, ...]} (float32)."""
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [f"{k}:{o}" for o in names for k in range(count) if f"{k}:{o}" not in data.files]
        if missing:
            raise ValueError(f"device outputs lack {missing[0]} ({len(missing)} missing)")
        return {o: np.concatenate([np.asarray(data[f"{k}:{o}"], dtype=np.float32).reshape(1, -1)
                                   for k in range(count)]) for o in names}


def grid_step(values: np.ndarray) -> float | None:
    """What it does: outputs of a quantized model -> the step of the grid they lie on (a dequantized int8 output:
    (q - zp) * scale), or None when they lie on no grid (float math after the last dequantization)."""
    flat = np.unique(np.asarray(values, dtype=np.float64).ravel())
    if len(flat) < 3 or len(flat) > 65536:
        return None
    diffs = np.diff(flat)
    step = float(diffs[diffs > 0].min())
    if step <= 0 or not np.isfinite(step):
        return None
    k = (flat - flat[0]) / step
    on_grid = np.abs(k - np.round(k)) <= 1e-3
    return step if on_grid.mean() >= 0.999 else None


def compare_on_device(device: dict[str, np.ndarray], host: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                      labels: np.ndarray | None, ref_accuracy: float | None, main_output: str) -> dict:
    """What it does: device and host outputs of one artifact on the same N samples + fp32 reference -> the record:
    fidelity on the device vs fp32 (as the host's verify computes it), the host's on the same samples, and per
    output the device-vs-host difference (max |diff|, differing values, in output-quantization steps)."""
    from .metrics import compare

    n = len(next(iter(device.values())))
    ref = {o: v.reshape(n, -1) for o, v in reference.items()}
    on_device = compare(device, ref, labels, ref_accuracy, main_output)
    on_host = compare(host, ref, labels, ref_accuracy, main_output)
    vs_host, identical = {}, True
    for name, dev in device.items():
        diff = np.abs(dev.astype(np.float64) - host[name].astype(np.float64))
        step = grid_step(host[name])
        entry = {"max_abs_diff": float(diff.max()), "differing_values": int((diff > 0).sum()),
                 "values": int(diff.size), "step": step,
                 "max_steps": None if step is None else int(np.round(diff.max() / step))}
        identical = identical and entry["differing_values"] == 0
        vs_host[name] = entry
    out = {"samples": n, "on_device": on_device, "on_host_same_samples": on_host, "vs_host": vs_host,
           "bit_identical_to_host": identical,
           "agreement_gap_pt": round((on_host["agreement"] - on_device["agreement"]) * 100.0, 6)}
    return out


def summary_line(record: dict) -> str:
    """What it does: an on-device record -> one line for logs and the report."""
    dev = record["on_device"]
    if record["bit_identical_to_host"]:
        diff = "bit-identical to the host"
    else:
        parts = []
        for name, e in record["vs_host"].items():
            if e["differing_values"]:
                steps = f"{e['max_steps']} step(s)" if e["max_steps"] is not None else "no quantization grid"
                parts.append(f"{name} max |diff| {e['max_abs_diff']:.3g} ({steps}, {e['differing_values']}/"
                             f"{e['values']} values)")
        diff = "differs from the host: " + "; ".join(parts)
    return f"{record['samples']} eval samples on the device: agreement {dev['agreement']:.4f}, {diff}"
