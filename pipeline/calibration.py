"""CalibrationSet: preprocessed calibration samples, checked before any quantizer sees them -> batch-1 feed dicts.

Quantizers happily calibrate on one sample or on zeros; this module refuses such sets itself.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from .errors import CalibrationError
from .iospec import IOSpec


# Per process, by identity (what the arrays are made from): fingerprints, passed checks, loaded and drawn arrays.
# A build asks for the same calibration subset once per stage of every target; it is drawn and checked once.
_FINGERPRINTS: dict[str, str] = {}
_CHECKED: set[tuple[str, int]] = set()
_ARRAYS: dict[str, dict] = {}
_ARRAYS_MAX = 16


def _remember(identity: str | None, make) -> dict:
    if identity is None:
        return make()
    if identity not in _ARRAYS:
        while len(_ARRAYS) >= _ARRAYS_MAX:
            _ARRAYS.pop(next(iter(_ARRAYS)))
        _ARRAYS[identity] = make()
    return _ARRAYS[identity]


class CalibrationSet:
    """Named input arrays with a leading sample axis; iterates as batch-1 {input_name: array} dicts.

    A set made by `from_dataset` / `from_files` (and its subsets) remembers how it was made, and pickles as that
    recipe rather than as arrays: a stage sent to a worker process rebuilds it there (pipeline/executor)."""

    def __init__(self, inputs: dict[str, np.ndarray], iospec: IOSpec, source: str, recipe: tuple | None = None,
                 identity: str | None = None):
        self.inputs = inputs
        self.iospec = iospec
        self.source = source
        self.recipe = recipe
        self.identity = identity  # what the arrays are made from: the same identity, the same fingerprint

    @classmethod
    def from_dataset(cls, dataset, split: str, source: str) -> "CalibrationSet":
        """What it does: a Dataset + split name -> every sample of that split, preprocessed."""
        data = dataset.split(split)
        return cls(data.inputs, dataset.iospec, source, recipe=(cls.from_dataset, (dataset, split, source)),
                   identity=f"dataset:{data.fingerprint}:{split}")

    @classmethod
    def from_files(cls, files: dict[str, str], iospec: IOSpec, source: str) -> "CalibrationSet":
        """What it does: {input name: .npy path} -> a set of those arrays (e.g. component inputs computed once)."""
        import os

        stats = sorted((n, p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for n, p in files.items())
        identity = f"files:{stats}"
        inputs = _remember(identity, lambda: {name: np.load(path) for name, path in files.items()})
        return cls(inputs, iospec, source, recipe=(cls.from_files, (dict(files), iospec, source)), identity=identity)

    def __reduce__(self):
        if self.recipe is not None:
            return self.recipe
        return (CalibrationSet, (self.inputs, self.iospec, self.source))

    def __len__(self) -> int:
        return 0 if not self.inputs else len(next(iter(self.inputs.values())))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield {k: v[i : i + 1] for k, v in self.inputs.items()}

    def subset(self, n: int, seed: int) -> "CalibrationSet":
        """n samples drawn without replacement with a fixed seed (sorted, so order is stable)."""
        if n > len(self):
            raise CalibrationError(
                f"{self.source}: the target asks for {n} calibration samples, the set has {len(self)}; "
                "add samples or lower calibration.samples"
            )
        identity = f"{self.identity}|subset:{n}:{seed}" if self.identity else None

        def draw():
            idx = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
            return {k: np.ascontiguousarray(v[idx]) for k, v in self.inputs.items()}

        return CalibrationSet(_remember(identity, draw), self.iospec, self.source,
                              recipe=(CalibrationSet.subset, (self, n, seed)) if self.recipe else None,
                              identity=identity)

    def fingerprint(self) -> str:
        """sha256 of the arrays (names, dtypes, shapes, bytes); remembered per identity in this process."""
        if self.identity is not None and self.identity in _FINGERPRINTS:
            return _FINGERPRINTS[self.identity]
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            arr = np.ascontiguousarray(self.inputs[name])
            h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        if self.identity is not None:
            _FINGERPRINTS[self.identity] = h.hexdigest()
        return h.hexdigest()

    def check(self, min_samples: int) -> None:
        """Raise CalibrationError for too few samples, wrong names/shapes/dtypes, non-finite or constant inputs."""
        if self.identity is not None and (self.identity, min_samples) in _CHECKED:
            return
        self._check(min_samples)
        if self.identity is not None:
            _CHECKED.add((self.identity, min_samples))

    def _check(self, min_samples: int) -> None:
        n = len(self)
        if n < min_samples:
            raise CalibrationError(f"{self.source}: {n} calibration samples, at least {min_samples} required")
        expected = {s.name: s for s in self.iospec.inputs}
        if set(self.inputs) != set(expected):
            raise CalibrationError(
                f"{self.source}: calibration inputs {sorted(self.inputs)} do not match model inputs {sorted(expected)}"
            )
        for name, arr in self.inputs.items():
            spec = expected[name]
            if tuple(arr.shape[1:]) != tuple(spec.shape[1:]) or arr.dtype != np.dtype(spec.dtype):
                raise CalibrationError(
                    f"{self.source}: input '{name}' is {arr.dtype}{list(arr.shape[1:])} per sample, "
                    f"the model expects {spec.dtype}{list(spec.shape[1:])}"
                )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).reshape(n, -1).any(axis=1).sum())
                raise CalibrationError(f"{self.source}: input '{name}' has non-finite values in {bad} samples")
            if n > 1 and np.all(arr == arr[:1]):
                raise CalibrationError(
                    f"{self.source}: input '{name}' is the same in every sample; calibration would learn nothing"
                )
            if arr.dtype.kind == "f" and float(np.ptp(arr)) == 0.0:
                raise CalibrationError(f"{self.source}: input '{name}' is constant ({float(arr.flat[0])})")
