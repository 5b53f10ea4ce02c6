"""Knowledge-distillation recovery: a compressed student + its uncompressed teacher + a pool of model-ready inputs
-> the student trained in place to match the teacher's outputs (CPU, seeded, bit-reproducible), and a report.

Loss per step: for every float output of forward (a tensor, or a tuple/list of tensors), rank-2 outputs with more
than one column (logits, scores) get T² · KL(softmax(teacher/T) || softmax(student/T)); any other float output gets
MSE. `label_weight` > 0 adds cross-entropy of the first output against `labels` where labels >= 0 (-1: unlabelled).

The student trains in eval mode (with gradients on): BatchNorm running statistics stay frozen, because a small pool
in small batches would overwrite the statistics the teacher's weights were trained with, and dropout stays off, so
the student is fitted as it will run. Weights of Linear/Conv layers that are exactly zero at the start (magnitude
pruning) are held at zero, so recovery does not undo the sparsity it is recovering from.
"""
from __future__ import annotations

import math
import time
from numbers import Integral

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..progress import Progress
from . import as_outputs

_EVAL_BATCH = 256


def _check(student, teacher, inputs, input_order, labels, eval_inputs, steps, batch_size, lr, temperature,
           label_weight) -> None:
    """What it does: the settings -> a one-line ConfigError for the first bad one (before anything runs)."""
    for name, value, ok, rule in (("steps", steps, isinstance(steps, Integral) and steps >= 1, "an integer >= 1"),
                                  ("batch_size", batch_size, isinstance(batch_size, Integral) and batch_size >= 1,
                                   "an integer >= 1"),
                                  ("lr", lr, lr > 0, "> 0"), ("temperature", temperature, temperature > 0, "> 0"),
                                  ("label_weight", label_weight, label_weight >= 0, ">= 0")):
        if not ok:
            raise ConfigError(f"distill.{name} must be {rule}, got {value!r}")
    if student is teacher or {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}:
        raise ConfigError("distill: the student shares weights with the teacher; pass a compressed deep copy")
    if not any(p.requires_grad for p in student.parameters()):
        raise ConfigError("distill: the student has no trainable parameter (all have requires_grad=False)")
    if not input_order:
        raise ConfigError("distill: input_order is empty; pass the IOSpec input names in forward's order")
    for what, arrays in (("inputs", inputs), ("eval_inputs", eval_inputs)):
        if arrays is None:
            continue
        missing = [n for n in input_order if n not in arrays]
        if missing:
            raise ConfigError(f"distill: {what} has no array for input(s) {', '.join(missing)} "
                              f"(has: {', '.join(sorted(arrays)) or 'none'})")
        sizes = {len(arrays[n]) for n in input_order}
        if len(sizes) != 1 or 0 in sizes:
            raise ConfigError(f"distill: {what} must be non-empty with one length for every input, got "
                              f"{', '.join(f'{n}: {len(arrays[n])}' for n in input_order)}")
    n = len(inputs[input_order[0]])
    if labels is not None and len(labels) != n:
        raise ConfigError(f"distill: {len(labels)} labels for a pool of {n} samples")
    if label_weight > 0 and (labels is None or not (np.asarray(labels) >= 0).any()):
        raise ConfigError("distill.label_weight > 0 needs labels >= 0 for some pool samples; set it to 0 or "
                          "give the pool's labels")


def _augment(batch: list[torch.Tensor], kinds: list[str], rng: np.random.Generator) -> list[torch.Tensor]:
    """What it does: one batch -> a label-preserving variant of it: images (NCHW; NHWC when axis 1 is not 1-4
    channels) mirrored left-right per sample plus gaussian noise of 0.02 x the batch std, audio [B, S] scaled by a
    per-sample gain in [0.8, 1.25]; text, integer and other inputs untouched."""
    out = []
    for x, kind in zip(batch, kinds):
        if kind == "image" and x.ndim == 4 and x.is_floating_point():
            flip = torch.from_numpy(rng.random(len(x)) < 0.5)[:, None, None, None]
            x = torch.where(flip, x.flip(3 if x.shape[1] <= 4 else 2), x)
            noise = torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32)).to(x.dtype)
            x = x + noise * (0.02 * x.std())
        elif kind == "audio" and x.ndim == 2 and x.is_floating_point():
            x = x * torch.from_numpy(rng.uniform(0.8, 1.25, len(x)).astype(np.float32)).to(x.dtype)[:, None]
        out.append(x)
    return out


def _check_label_range(teacher: nn.Module, pool: list[torch.Tensor], targets: torch.Tensor) -> None:
    """What it does: labels -> a ConfigError when one is past the first output's classes (else an IndexError deep
    in torch mid-training); the class count comes from one teacher forward on the first sample."""
    with torch.no_grad():
        classes = as_outputs(teacher(*[x[:1] for x in pool]))[0].shape[-1]
    if int(targets.max()) >= classes:
        raise ConfigError(f"distill: label {int(targets.max())} is out of range for the first output's {classes} "
                          "classes")


def _loss(student_out, teacher_out, labels, temperature: float, label_weight: float) -> torch.Tensor:
    """What it does: student and teacher outputs (+ batch labels) -> the scalar distillation loss."""
    loss = 0.0
    for s, t in zip(as_outputs(student_out), as_outputs(teacher_out)):
        if not s.is_floating_point():
            continue
        if s.ndim == 2 and s.shape[1] > 1:
            loss = loss + F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                   log_target=True, reduction="batchmean") * temperature ** 2
        else:
            loss = loss + F.mse_loss(s, t)
    if label_weight > 0 and bool((labels >= 0).any()):
        keep = labels >= 0
        loss = loss + label_weight * F.cross_entropy(as_outputs(student_out)[0][keep], labels[keep])
    return loss


def _agreement(student: nn.Module, teacher: nn.Module, pool: list[torch.Tensor]) -> float:
    """What it does: eval inputs -> share of samples where student and teacher agree on the first output's argmax."""
    same = 0
    with torch.no_grad():
        for lo in range(0, len(pool[0]), _EVAL_BATCH):
            batch = [x[lo : lo + _EVAL_BATCH] for x in pool]
            s, t = as_outputs(student(*batch))[0], as_outputs(teacher(*batch))[0]
            same += int((s.argmax(-1) == t.argmax(-1)).sum())
    return same / len(pool[0])


def _zero_masks(student: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
    """What it does: a student -> a keep-mask for each Linear/Conv weight that holds exact zeros (pruned weights)."""
    masks = {}
    for m in student.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and bool((m.weight == 0).any()):
            masks[m.weight] = m.weight.detach() != 0
    return masks


def _train(student, teacher, pool, kinds, targets, masks, rng, task, steps, batch_size, lr, temperature,
           label_weight, augment) -> list[float]:
    """What it does: the checked setup -> `steps` AdamW steps on the student; the loss of every step."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    n, losses = len(pool[0]), []
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(n, size=min(batch_size, n), replace=False))
        batch = _augment([x[idx] for x in pool], kinds, rng) if augment else [x[idx] for x in pool]
        with torch.no_grad():
            teacher_out = teacher(*batch)
        loss = _loss(student(*batch), teacher_out, None if targets is None else targets[idx], temperature,
                     label_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            for weight, keep in masks.items():
                weight.mul_(keep)
        losses.append(float(loss.detach()))
        task.advance(1)
    return losses


def distill(student: nn.Module, teacher: nn.Module, inputs: dict[str, np.ndarray], input_order: list[str],
            modalities: dict[str, str], labels: np.ndarray | None, *, steps: int, batch_size: int = 32,
            lr: float = 1e-3, temperature: float = 2.0, label_weight: float = 0.0, augment: bool = True,
            seed: int = 0, progress=None, eval_inputs: dict[str, np.ndarray] | None = None) -> dict:
    """What it does: student, frozen teacher, input pool -> the student trained in place for exactly `steps` AdamW
    steps (cosine-decayed lr, no weight decay: training starts from good weights) on seeded random batches of the
    pool, and a report (settings, mean loss of the first/last 10 % of steps, seconds, top-1 student/teacher agreement
    on `eval_inputs` before and after). Both models end in eval mode. Bit-reproducible for a seed, a torch build
    and a torch thread count (the caller fixes the count). ConfigError before any training for a bad setting."""
    _check(student, teacher, inputs, input_order, labels, eval_inputs, steps, batch_size, lr, temperature,
           label_weight)
    pool = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in input_order]
    evals = [torch.from_numpy(np.ascontiguousarray(eval_inputs[k])) for k in input_order] if eval_inputs else None
    targets = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    teacher.eval()
    student.eval()
    if label_weight > 0:
        _check_label_range(teacher, pool, targets)
    report = {"steps": steps, "batch_size": batch_size, "lr": lr, "temperature": temperature,
              "label_weight": label_weight, "augment": augment, "seed": seed}
    if evals is not None:
        report["eval_agreement_before"] = _agreement(student, teacher, evals)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.enable_grad(), \
            (progress or Progress(enabled=False)).task("distill", total=steps) as task:
        torch.manual_seed(seed)
        losses = _train(student, teacher, pool, [modalities.get(k, "none") for k in input_order], targets,
                        _zero_masks(student), np.random.default_rng(seed), task, steps, batch_size, lr,
                        temperature, label_weight, augment)
    k = max(1, math.ceil(steps / 10))
    report.update(loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:])),
                  seconds=round(time.perf_counter() - start, 3))
    if evals is not None:
        report["eval_agreement_after"] = _agreement(student, teacher, evals)
    return report
