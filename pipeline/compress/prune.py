"""Magnitude pruning (unstructured): the smallest-|w| weights of Linear/Conv layers set to exactly zero, globally
(one threshold over all chosen layers) or per layer (each layer loses the same share).

Zeros do not shrink a dense file, and no runtime here runs sparse kernels for these formats, so the honest
numbers are the sparsity, the dense size (unchanged) and the compressed size of the file (`zipped_size`): what a
download or an OTA update pays.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from . import select_layers


def _candidates(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def magnitude_prune(model: nn.Module, sparsity: float, scope: str = "global", layers: list[str] | None = None,
                    skip: list[str] = ()) -> list[dict]:
    """What it does: a model + target sparsity in [0, 1) -> the chosen layers' smallest weights zeroed in place;
    a report row per layer (weights, zeros). ConfigError before any change for a sparsity outside [0, 1), an
    unknown scope, or a pattern that matches no layer."""
    if not 0 <= sparsity < 1:
        raise ConfigError(f"prune.sparsity must be in [0, 1), got {sparsity}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"prune.scope must be 'global' or 'layer', got '{scope}'")
    modules = dict(model.named_modules())
    names = select_layers(_candidates(model), layers, list(skip), "prune")
    weights = {n: modules[n].weight for n in names}
    with torch.no_grad():
        if scope == "global" and weights:
            flat = torch.cat([w.detach().abs().flatten() for w in weights.values()])
            k = int(sparsity * flat.numel())
            threshold = torch.kthvalue(flat, k).values if k > 0 else None
            for w in weights.values():
                if threshold is not None:
                    w.masked_fill_(w.abs() <= threshold, 0.0)
        else:
            for w in weights.values():
                k = int(sparsity * w.numel())
                if k > 0:
                    idx = torch.argsort(w.detach().abs().flatten())[:k]
                    w.view(-1)[idx] = 0.0
    return [{"name": n, "weights": int(w.numel()), "zeros": int((w == 0).sum())} for n, w in weights.items()]


def zipped_size(path: Path) -> int:
    """What it does: a model file -> its size after zlib level 9 (what zeros save in transport and storage)."""
    return len(zlib.compress(Path(path).read_bytes(), 9))
