"""AdaRound itself, one layer at a time (the round_weights stage in rounding.py finds the layers and their inputs):
a layer's fp32 weight + its calibration inputs -> grid values whose rounding directions keep its output closest to
fp32. Two objectives: `adaround_exact` over every input through the Gram matrices of the layer's input patches
(class Quadratic), `adaround` on random mini-batches as in Nagel et al. (2020)."""
from __future__ import annotations

import numpy as np

GRID_LEVELS = 127  # symmetric int8 weights: q in [-127, 127], step = max|w| / 127
REG = 10.0  # weight of the rounding regulariser against the relative reconstruction error
GRAM_BUDGET_FLOATS = 64 * 1024 * 1024  # objective exact: the largest Gram matrices (or kept input rows) of a layer
PATCH_BUDGET_FLOATS = 32 * 1024 * 1024  # unfolded input patches held at once while building a conv's Gram matrix


def _forward(layer: dict, x, w):
    """What it does: one layer's weight-only output (no bias: it cancels in the reconstruction error)."""
    import torch
    from torch.nn import functional as F

    if layer["op"] == "conv":
        if any(layer["pads"]):
            x = F.pad(x, layer["pads"])
        return F.conv2d(x, w, None, layer["stride"], 0, layer["dilation"], layer["groups"])
    return torch.matmul(x, w if layer["axis"] == 1 else w.t())


def grid_step(w: np.ndarray, axis: int) -> np.ndarray:
    """What it does: a weight -> its symmetric per-output-channel int8 step max|w|/127, shaped to broadcast."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    shape = [1] * w.ndim
    shape[axis] = w.shape[axis]
    return (np.abs(w).max(axis=other) / GRID_LEVELS).reshape(shape)


class Quadratic:
    """A layer's summed squared output over every calibration input, as a quadratic form in a weight change dW:
    sum_x |layer(x, dW)|^2 = sum_groups tr(dW_g G_g dW_g^T), with G_g the Gram matrix of the group's input patches
    (conv: unfolded kh*kw windows; linear: input rows). Built once, so an AdaRound step costs a few small matrix
    products instead of two convolutions over a mini-batch, and the objective is the exact one over all inputs
    rather than a sampled estimate. Linear layers with fewer input rows than features keep the rows instead."""

    def __init__(self, layer: dict, w_shape: tuple, inputs: np.ndarray):
        import torch
        from torch.nn import functional as F

        self.layer = layer
        x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
        if layer["op"] == "linear":
            n_in = w_shape[0] if layer["axis"] == 1 else w_shape[1]
            n_out = w_shape[1] if layer["axis"] == 1 else w_shape[0]
            rows = x.reshape(-1, n_in)
            self.count = rows.shape[0] * n_out
            self.rows = rows if rows.shape[0] <= n_in else None
            self.gram = None if self.rows is not None else (rows.double().t() @ rows.double()).float()[None]
            return
        self.rows = None
        groups = layer["groups"]
        c_out, c_in_g, kh, kw = w_shape
        k = c_in_g * kh * kw
        gram = torch.zeros(groups, k, k, dtype=torch.float64)
        per_sample = x.shape[1] * kh * kw * x.shape[2] * x.shape[3]
        step = max(1, PATCH_BUDGET_FLOATS // max(per_sample, 1))
        positions = 0
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            if any(layer["pads"]):
                chunk = F.pad(chunk, layer["pads"])
            cols = F.unfold(chunk, (kh, kw), dilation=layer["dilation"], stride=layer["stride"])  # (n, C*kh*kw, L)
            n, _, length = cols.shape
            patches = cols.view(n, groups, k, length).permute(1, 2, 0, 3).reshape(groups, k, n * length)
            gram += torch.bmm(patches, patches.transpose(1, 2)).double()
            positions += n * length
        self.gram = gram.float()
        self.count = positions * c_out

    @staticmethod
    def fits(layer: dict, w_shape: tuple, inputs_shape: tuple) -> bool:
        """What it does: -> whether the Gram matrices stay within GRAM_BUDGET_FLOATS (else: sampled objective)."""
        if layer["op"] == "linear":
            n_in = w_shape[0] if layer["axis"] == 1 else w_shape[1]
            rows = int(np.prod(inputs_shape)) // n_in
            return min(rows, n_in) * n_in <= GRAM_BUDGET_FLOATS
        k = w_shape[1] * w_shape[2] * w_shape[3]
        return layer["groups"] * k * k <= GRAM_BUDGET_FLOATS

    def sum_sq(self, dw):
        """What it does: a weight change (torch, the weight's shape) -> sum over all inputs of its squared output."""
        import torch

        if self.layer["op"] == "linear":
            d = dw if self.layer["axis"] == 1 else dw.t()  # (in, out)
            if self.rows is not None:
                return torch.sum((self.rows @ d) ** 2)
            return torch.sum(d * (self.gram[0] @ d))
        groups = self.gram.shape[0]
        d = dw.reshape(groups, dw.shape[0] // groups, -1)  # (groups, out per group, in per group * kh * kw)
        return torch.sum(torch.bmm(d, self.gram) * d)


def _relaxed(w: np.ndarray, axis: int, lr: float):
    """What it does: an fp32 weight -> (step, weight tensor, floor, V, Adam on V, round-to-nearest levels, live mask):
    the rounding variables V of h(V) = clip(1.2 sigmoid(V) - 0.1, 0, 1), started at each weight's fractional part."""
    import torch

    step_np = grid_step(w, axis)
    live = np.broadcast_to(step_np > 0, w.shape)
    step = torch.from_numpy(np.where(step_np > 0, step_np, 1.0).astype(np.float32))
    wt = torch.from_numpy(w)
    scaled = wt / step
    floor = torch.floor(scaled)
    rest = (scaled - floor).clamp(0, 1)
    v0 = ((rest + 0.1) / 1.2).clamp(0.01, 0.99)
    v = torch.log(v0 / (1 - v0)).requires_grad_(True)
    nearest = torch.round(scaled).clamp(-GRID_LEVELS, GRID_LEVELS)
    return step, wt, floor, v, torch.optim.Adam([v], lr=lr), nearest, live


def _soft(v):
    import torch

    return (torch.sigmoid(v) * 1.2 - 0.1).clamp(0, 1)


def _descend(opt, loss, h, it: int, iterations: int) -> None:
    """One Adam step on the relative reconstruction loss, plus the annealed rounding regulariser after 20 %."""
    warm = int(0.2 * iterations)
    if it >= warm:
        beta = 20 - (20 - 2) * (it - warm) / max(iterations - warm, 1)
        loss = loss + REG * (1 - (2 * h - 1).abs().pow(beta)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _hardened(w: np.ndarray, axis: int, step, levels, live) -> np.ndarray:
    """What it does: grid levels -> grid values, except that the largest weight of each channel stays exactly as it
    is (+-127 steps: its channel's step must not change) and dead channels (all zero) stay."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    keep = (np.abs(w) == np.abs(w).max(axis=other, keepdims=True)) | ~live
    return np.where(keep, w, (step * levels).numpy().astype(np.float32))


def adaround_exact(layer: dict, w: np.ndarray, quad: Quadratic, iterations: int,
                   lr: float = 0.1) -> tuple[np.ndarray, float, float]:
    """What it does: one layer's fp32 weight + the Quadratic of its calibration inputs -> (grid-valued weight, output
    MSE of round-to-nearest, output MSE of the learnt rounding), both over every calibration input. The same
    relaxation, annealing and regulariser as `adaround`, on the exact objective; deterministic (no draws)."""
    import torch

    step, wt, floor, v, opt, nearest, live = _relaxed(w, layer["axis"], lr)
    with torch.no_grad():
        unit = float(quad.sum_sq(step * nearest - wt))
    if unit <= 0:
        return w.copy(), 0.0, 0.0
    for it in range(iterations):
        h = _soft(v)
        _descend(opt, quad.sum_sq(step * (floor + h) - wt) / unit, h, it, iterations)
    with torch.no_grad():
        q = (floor + (_soft(v) >= 0.5).float()).clamp(-GRID_LEVELS, GRID_LEVELS)
        out = _hardened(w, layer["axis"], step, q, live)
        near = _hardened(w, layer["axis"], step, nearest, live)
        learnt = float(quad.sum_sq(torch.from_numpy(out) - wt))
        unit = float(quad.sum_sq(torch.from_numpy(near) - wt))
    if learnt > unit:  # never worse than the toolchains' own rounding, over all calibration inputs
        return near, unit / quad.count, unit / quad.count
    return out, unit / quad.count, learnt / quad.count


def adaround(layer: dict, w: np.ndarray, inputs: np.ndarray, iterations: int, batch: int, crop: int,
             seed: int, lr: float = 0.1) -> tuple[np.ndarray, float, float]:
    """What it does: one layer's fp32 weight + its calibration inputs -> (grid-valued weight, output MSE of
    round-to-nearest, output MSE of the learnt rounding) on the inputs. Each channel keeps its largest weight
    exactly, so a toolchain recomputing max|w|/127 finds the same grid. Deterministic for a given seed."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    step, wt, floor, v, opt, nearest, live = _relaxed(w, layer["axis"], lr)
    x_all = torch.from_numpy(inputs)
    spatial = layer["op"] == "conv"

    def sample():
        idx = torch.randint(0, x_all.shape[0], (min(batch, x_all.shape[0]),), generator=gen)
        x = x_all[idx]
        if spatial and crop and x.shape[-1] > crop and x.shape[-2] > crop:
            top = int(torch.randint(0, x.shape[-2] - crop + 1, (1,), generator=gen))
            left = int(torch.randint(0, x.shape[-1] - crop + 1, (1,), generator=gen))
            x = x[..., top:top + crop, left:left + crop]
        return x

    # The reconstruction loss is relative to round-to-nearest's error on a fixed probe batch: scale-free, so the
    # rounding regulariser weighs the same in every layer. The probe also judges the result at the end.
    probe = x_all[: min(8, x_all.shape[0])]
    with torch.no_grad():
        ref = _forward(layer, probe, wt)
        unit = float(torch.mean((_forward(layer, probe, step * nearest) - ref) ** 2))
    if unit <= 0:
        return w.copy(), 0.0, 0.0
    for it in range(iterations):
        x = sample()
        with torch.no_grad():
            target = _forward(layer, x, wt)
        h = _soft(v)
        # (not _forward(x, new - wt) by linearity: one convolution less per step, but the float rounding it changes
        # moved single eval photos both ways on the default release; measured in BENCHMARKS.md)
        _descend(opt, torch.mean((_forward(layer, x, step * (floor + h)) - target) ** 2) / unit, h, it, iterations)
    with torch.no_grad():
        q = (floor + (_soft(v) >= 0.5).float()).clamp(-GRID_LEVELS, GRID_LEVELS)
        out = _hardened(w, layer["axis"], step, q, live)
        mse_learnt = float(torch.mean((_forward(layer, probe, torch.from_numpy(out)) - ref) ** 2))
    if mse_learnt > unit:  # never worse than the toolchains' own rounding on the probe batch
        return _hardened(w, layer["axis"], step, nearest, live), unit, unit
    return out, unit, mse_learnt
