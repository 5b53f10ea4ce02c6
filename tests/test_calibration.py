"""CalibrationSet checks: degenerate sets are refused before any quantizer sees them."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.calibration import CalibrationSet
from pipeline.errors import CalibrationError
from pipeline.iospec import IOSpec, TensorSpec

SPEC = IOSpec(inputs=(TensorSpec(name="x", shape=(1, 4), dtype="float32"),
                      TensorSpec(name="ids", shape=(1, 3), dtype="int64")),
              outputs=(TensorSpec(name="y", shape=(1, 2), dtype="float32"),))


def make(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 4)).astype(np.float32), "ids": rng.integers(0, 9, size=(n, 3))}


def test_good_set_passes_and_iterates_batch1():
    cs = CalibrationSet(make(), SPEC, "t")
    cs.check(32)
    first = next(iter(cs))
    assert first["x"].shape == (1, 4) and first["ids"].dtype == np.int64 and len(cs) == 64


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: {k: v[:1] for k, v in d.items()}, "at least"),
    (lambda d: {**d, "x": np.zeros_like(d["x"])}, "same in every sample"),
    (lambda d: {**d, "x": np.where(np.arange(64)[:, None] == 5, np.nan, d["x"]).astype(np.float32)}, "non-finite"),
    (lambda d: {**d, "x": np.where(np.arange(64)[:, None] == 7, np.inf, d["x"]).astype(np.float32)}, "non-finite"),
    (lambda d: {**d, "x": d["x"][:, :3]}, "expects float32\\[4\\]"),
    (lambda d: {**d, "ids": d["ids"].astype(np.int32)}, "int32"),
    (lambda d: {"x": d["x"]}, "do not match"),
    (lambda d: {**d, "ids": np.ones_like(d["ids"])}, "same in every sample"),
])
def test_degenerate_sets_are_refused(mutate, needle):
    with pytest.raises(CalibrationError, match=needle):
        CalibrationSet(mutate(make()), SPEC, "t").check(32)


def test_subset_is_seeded_and_bounded():
    cs = CalibrationSet(make(), SPEC, "t")
    a, b, c = cs.subset(40, 1), cs.subset(40, 1), cs.subset(40, 2)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    with pytest.raises(CalibrationError, match="asks for 65"):
        cs.subset(65, 0)
