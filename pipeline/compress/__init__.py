"""Compression methods (torch -> torch, before export, so every format inherits them): magnitude pruning
(`prune.py`) and low-rank factorization by truncated SVD (`lowrank.py`). Each returns a per-layer report; bad
settings are ConfigErrors before anything changes. Structured pruning, distillation recovery and the release-config
recipe stage come next (issue 5)."""
from __future__ import annotations

from fnmatch import fnmatchcase

from ..errors import ConfigError


def select_layers(names: list[str], include: list[str] | None, skip: list[str], what: str) -> list[str]:
    """What it does: candidate layer names + fnmatch include/skip patterns -> the chosen names, in order.
    A pattern that matches no candidate is a ConfigError (a typo would otherwise compress nothing silently)."""
    for pattern in list(include or []) + list(skip):
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ConfigError(f"{what}: layer pattern '{pattern}' matches no layer (layers: {', '.join(names[:6])}"
                              f"{', ...' if len(names) > 6 else ''})")
    chosen = [n for n in names if include is None or any(fnmatchcase(n, p) for p in include)]
    return [n for n in chosen if not any(fnmatchcase(n, p) for p in skip)]


def as_outputs(result) -> list:
    """What it does: a forward's result (a tensor, or a tuple/list of them) -> the list of output tensors."""
    return list(result) if isinstance(result, (tuple, list)) else [result]
