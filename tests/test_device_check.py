"""On-device verification: the comparison of a device's outputs with the host's and with fp32 (device_check.py)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.device_check import compare_on_device, grid_step, stack, summary_line, write_set


def _grid(rng, n, c, step=0.125, zp=3):
    q = rng.integers(-128, 128, size=(n, c))
    return ((q - zp) * step).astype(np.float32)


def test_grid_step_finds_the_dequantization_step_and_refuses_float_outputs():
    rng = np.random.default_rng(0)
    assert grid_step(_grid(rng, 20, 10, step=0.328)) == pytest.approx(0.328, rel=1e-5)
    assert grid_step(rng.standard_normal((20, 10)).astype(np.float32)) is None  # float math after the last DQ
    assert grid_step(np.zeros((4, 4), np.float32)) is None


def test_identical_outputs_are_reported_bit_identical():
    rng = np.random.default_rng(1)
    host = {"logits": _grid(rng, 12, 6)}
    ref = {"logits": host["logits"] + rng.normal(0, 0.01, size=(12, 6)).astype(np.float32)}
    rec = compare_on_device({"logits": host["logits"].copy()}, host, ref, None, None, "logits")
    assert rec["bit_identical_to_host"] is True and rec["agreement_gap_pt"] == 0
    assert rec["vs_host"]["logits"]["differing_values"] == 0 and rec["vs_host"]["logits"]["max_steps"] == 0
    assert "bit-identical" in summary_line(rec)


def test_a_device_two_steps_off_is_counted_in_steps_and_its_agreement_is_its_own():
    rng = np.random.default_rng(2)
    host = _grid(rng, 10, 5, step=0.25)
    dev = host.copy()
    dev[3, 1] += 0.5  # two steps on one value
    dev[7] = dev[7][::-1]  # a changed ranking on one sample
    labels = host.argmax(1)
    rec = compare_on_device({"y": dev}, {"y": host}, {"y": host}, labels, 1.0, "y")
    e = rec["vs_host"]["y"]
    assert rec["bit_identical_to_host"] is False
    assert e["step"] == pytest.approx(0.25) and e["max_steps"] >= 2 and e["differing_values"] >= 1
    assert rec["on_host_same_samples"]["agreement"] == 1.0
    assert rec["on_device"]["agreement"] < 1.0 and rec["agreement_gap_pt"] > 0
    assert "differs from the host" in summary_line(rec) and "step(s)" in summary_line(rec)


def test_write_set_round_trips_through_stack(tmp_path):
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 4)).astype(np.float32)} for _ in range(3)]
    host = {"y": rng.standard_normal((5, 2)).astype(np.float32)}  # more rows than samples: the first 3 are used
    write_set(tmp_path / "s", feeds, host, {"y": host["y"]}, np.arange(5))
    got = stack(tmp_path / "s" / "host.npz", ["y"], 3)
    np.testing.assert_array_equal(got["y"], host["y"][:3])
    with np.load(tmp_path / "s" / "inputs.npz") as data:
        assert int(data["count"]) == 3 and sorted(data.files) == ["0:x", "1:x", "2:x", "count"]
    assert np.load(tmp_path / "s" / "labels.npy").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="lack 3:y"):
        stack(tmp_path / "s" / "host.npz", ["y"], 4)
