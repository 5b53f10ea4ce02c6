"""Low-rank factorization: a Linear, Conv1d or Conv2d layer -> two smaller layers from its truncated SVD (torch.linalg).

W (out x in·kh·kw) = U S Vh. Keeping the top r singular values gives W_r = (U_r S_r^½)(S_r^½ Vh_r): the first
layer applies S_r^½ Vh_r (a Linear in -> r, or a kh x kw Conv2d in -> r with the original stride/padding/dilation:
"by channel"), the second U_r S_r^½ (a Linear r -> out, or a 1x1 Conv2d r -> out) and carries the bias. A 1x1
convolution becomes a 1x1 pair. ||W - W_r||_F / ||W||_F = sqrt(1 - energy kept), energy = sum of the kept S² over
all S². A layer is left alone when r (in + out) would not be smaller than in · out (no saving), and grouped or
depthwise convolutions are never factorized.

Rank rules: `energy` (smallest rank keeping that share of sum S²), `rank` (the same for every layer),
`param_ratio` (largest rank within that share of the layer's weights), or `min_cosine`: a per-layer sensitivity
scan on held-out samples (the calibration pool, never eval) that factorizes one layer at a time at ranks of
1/16 .. 3/4 of full and keeps the smallest rank whose model outputs stay at or above that cosine to the
unfactorized model's (a layer that needs more than 3/4 of its rank, or saves nothing, is left alone).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError
from . import as_outputs, select_layers


@dataclass
class LowRankLayer:
    name: str
    kind: str  # linear | conv
    shape: tuple[int, ...]
    rank: int | None  # None: left alone
    full_rank: int
    energy_kept: float
    params_before: int
    params_after: int
    note: str = ""
    scan_cosine: float | None = None  # min_cosine rule: worst output cosine at the chosen rank


def _matrix(layer: nn.Module) -> torch.Tensor:
    """What it does: a Linear/Conv2d -> its weight as an (out, in·kh·kw) matrix in float64."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.float64)


def choose_rank(s: torch.Tensor, n_out: int, n_in: int, energy: float | None, rank: int | None,
                param_ratio: float | None) -> int:
    """What it does: singular values + one rule -> the rank: the smallest keeping `energy` of sum(S²); a fixed
    `rank`; or the largest whose two factors hold at most `param_ratio` of the layer's weights."""
    if rank is not None:
        return rank
    if energy is not None:
        share = torch.cumsum(s ** 2, 0) / torch.sum(s ** 2).clamp_min(1e-300)
        return int(torch.searchsorted(share, torch.tensor(energy, dtype=share.dtype) - 1e-12).item()) + 1
    return max(1, int(param_ratio * n_out * n_in / (n_out + n_in)))


def factorize(layer: nn.Module, r: int) -> tuple[nn.Sequential, float]:
    """What it does: a Linear or groups=1 Conv1d/Conv2d + rank r -> (the two-layer replacement, energy kept)."""
    w = _matrix(layer)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = torch.sqrt(s[:r])
    first_w = (root[:, None] * vh[:r]).to(layer.weight.dtype)
    second_w = (u[:, :r] * root[None, :]).to(layer.weight.dtype)
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, r, bias=False)
        second = nn.Linear(r, layer.out_features, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        conv = type(layer)  # Conv1d or Conv2d
        first = conv(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                     bias=False, padding_mode=layer.padding_mode)
        second = conv(r, layer.out_channels, 1, bias=bias)
        first.weight.data.copy_(first_w.reshape(r, *layer.weight.shape[1:]))
        second.weight.data.copy_(second_w.reshape(layer.out_channels, r, *[1] * (layer.weight.dim() - 2)))
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    energy = float((s[:r] ** 2).sum() / (s ** 2).sum().clamp_min(1e-300))
    return nn.Sequential(first, second), energy


def _candidates(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) or (isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups == 1)]


SCAN_FRACTIONS = (1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 5 / 8, 3 / 4)


def _cosine(ref: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """Worst per-sample cosine over all float outputs (flattened per sample)."""
    worst = 1.0
    for a, b in zip(ref, got):
        if not a.is_floating_point():
            continue
        a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
        worst = min(worst, float(cos.min()))
    return worst


def _run(model: nn.Module, batches: list[tuple]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for batch in batches:
            outs.append(as_outputs(model(*batch)))
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


def scan_ranks(model: nn.Module, names: list[str], batches: list[tuple], min_cosine: float,
               progress=None) -> dict[str, tuple[int | None, float]]:
    """What it does: layers + held-out batches + a cosine floor -> per layer (the smallest scanned rank whose
    outputs keep >= min_cosine to the unfactorized model when only that layer is factorized, that cosine), or
    (None, best cosine seen) when no scanned rank that saves parameters is good enough."""
    modules = dict(model.named_modules())
    ref = _run(model, batches)
    chosen = {}
    with (progress.task("low-rank sensitivity scan", total=len(names)) if progress is not None
          else contextlib.nullcontext()) as task:
        for n in names:
            layer = modules[n]
            n_out, n_in = _matrix(layer).shape
            full = min(n_out, n_in)
            ranks = sorted({max(1, round(f * full)) for f in SCAN_FRACTIONS})
            ranks = [r for r in ranks if r * (n_in + n_out) < n_in * n_out]
            parent_name, _, attr = n.rpartition(".")
            parent = modules[parent_name] if parent_name else model
            best = (None, -1.0)
            for r in ranks:
                pair, _ = factorize(layer, r)
                setattr(parent, attr, pair)
                try:
                    cos = _cosine(ref, _run(model, batches))
                finally:
                    setattr(parent, attr, layer)
                if cos >= min_cosine:
                    best = (r, cos)
                    break
                best = (None, max(best[1], cos))
            chosen[n] = best
            if task is not None:
                task.advance(1)
    return chosen


def apply_lowrank(model: nn.Module, energy: float | None = None, rank: int | None = None,
                  param_ratio: float | None = None, layers: list[str] | None = None,
                  skip: list[str] = (), min_cosine: float | None = None, batches: list[tuple] | None = None,
                  progress=None) -> list[dict]:
    """What it does: a model + exactly one rank rule (+ fnmatch layer patterns) -> the model with every chosen
    layer that saves parameters replaced in place by its two-layer factorization; a report row per chosen layer.
    ConfigError (before any change) for a missing/second rule, energy outside (0, 1], a ratio outside (0, 1),
    a rank larger than a chosen layer allows, or a pattern that matches no layer."""
    rules = [x is not None for x in (energy, rank, param_ratio, min_cosine)]
    if sum(rules) != 1:
        raise ConfigError("lowrank: give exactly one of energy, rank, param_ratio, min_cosine")
    if min_cosine is not None and not 0 < min_cosine <= 1:
        raise ConfigError(f"lowrank.min_cosine must be in (0, 1], got {min_cosine}")
    if energy is not None and not 0 < energy <= 1:
        raise ConfigError(f"lowrank.energy must be in (0, 1], got {energy}")
    if param_ratio is not None and not 0 < param_ratio < 1:
        raise ConfigError(f"lowrank.param_ratio must be in (0, 1), got {param_ratio}")
    if rank is not None and rank < 1:
        raise ConfigError(f"lowrank.rank must be >= 1, got {rank}")
    names = select_layers(_candidates(model), layers, list(skip), "lowrank")
    modules = dict(model.named_modules())
    if rank is not None:
        for n in names:
            full = min(_matrix(modules[n]).shape)
            if rank > full:
                raise ConfigError(f"lowrank.rank {rank} is larger than layer '{n}' allows ({full})")
    scanned = scan_ranks(model, names, batches, min_cosine, progress) \
        if min_cosine is not None and batches else {}
    report = []
    for n in names:
        layer = modules[n]
        w = _matrix(layer)
        n_out, n_in = w.shape
        s = torch.linalg.svdvals(w)
        cos = None
        if min_cosine is not None:
            r, cos = scanned.get(n, (1, 1.0))  # no batches: the config dry run, any valid rank will do
        else:
            r = choose_rank(s, n_out, n_in, energy, rank, param_ratio)
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        before = layer.weight.numel() + (layer.bias.numel() if layer.bias is not None else 0)
        row = LowRankLayer(n, kind, tuple(layer.weight.shape), None, len(s), 1.0, before, before)
        if cos is not None:
            row.scan_cosine = cos
        if r is None:
            row.note = f"no scanned rank keeps output cosine >= {min_cosine} (best {cos:.5f})"
        elif r * (n_in + n_out) >= n_in * n_out:
            row.note = f"rank {r} would not save parameters"
        else:
            new, kept = factorize(layer, r)
            parent_name, _, attr = n.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, new)
            row.rank, row.energy_kept = r, kept
            row.params_after = sum(p.numel() for p in new.parameters())
        report.append(asdict(row))
    return report
