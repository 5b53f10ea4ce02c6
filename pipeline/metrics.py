"""Fidelity metrics: an artifact's outputs vs reference outputs (leading sample axis) -> agreement, cosine, ranking
metrics, accuracy. Shared by verification on the host (verify.py) and on the device (device_check.py). numpy only.
"""
from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, num / np.maximum(den, 1e-300), (np.abs(a - b).max(1) == 0).astype(np.float64))


def compare(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], labels: np.ndarray | None,
            ref_accuracy: float | None, main_output: str) -> dict:
    """Fidelity of artifact outputs against reference outputs (all arrays have a leading sample axis)."""
    per_output = {}
    for name, ref in reference.items():
        got = outputs[name]
        cos = cosine_rows(got, ref)
        per_output[name] = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                            "max_abs_err": float(np.abs(got.astype(np.float64) - ref).max())}
        if ref.ndim == 2 and ref.shape[1] >= 2:
            per_output[name].update(ranking_metrics(got.astype(np.float64), ref.astype(np.float64)))
    got, ref = outputs[main_output], reference[main_output]
    result = {"samples": int(len(ref)), "outputs": per_output,
              "agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())}
    if labels is not None:
        known = labels >= 0  # -1 marks an unlabelled sample (e.g. a photo matching no prompt)
        if known.any():
            acc = float((got.argmax(-1)[known] == labels[known]).mean())
            result["accuracy"] = acc
            result["labelled_samples"] = int(known.sum())
            result["reference_accuracy"] = ref_accuracy
            result["accuracy_drop_pt"] = round((ref_accuracy - acc) * 100.0, 6)
    return result


def ranking_metrics(got: np.ndarray, ref: np.ndarray, confident: float = 0.5) -> dict:
    """What it does: scores/logits [N, C] of an artifact and of fp32 -> top-1 agreement; top-5 overlap (mean share
    of fp32's top 5 in the artifact's top 5, C >= 5); top-1 agreement on the samples fp32 is confident about
    (softmax max > `confident`) and their count; pairwise ranking agreement (share of class pairs ordered the
    same, C <= 64: e.g. a prompt ranking)."""
    out = {"top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
    c = ref.shape[1]
    if c >= 5:
        top_got, top_ref = np.argsort(-got, 1)[:, :5], np.argsort(-ref, 1)[:, :5]
        out["top5_overlap"] = float(np.mean([len(set(a) & set(b)) / 5.0 for a, b in zip(top_got, top_ref)]))
    e = np.exp(ref - ref.max(1, keepdims=True))
    sure = (e / e.sum(1, keepdims=True)).max(1) > confident
    out["confident_samples"] = int(sure.sum())
    if sure.any():
        out["confident_agreement"] = float((got.argmax(1)[sure] == ref.argmax(1)[sure]).mean())
    if c <= 64:
        i, j = np.triu_indices(c, 1)
        same = np.sign(got[:, i] - got[:, j]) == np.sign(ref[:, i] - ref[:, j])
        out["pairwise_rank_agreement"] = float(same.mean())
    return out
