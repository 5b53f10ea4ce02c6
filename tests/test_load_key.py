"""The load stage's key sees the files a factory's params name: a checkpoint replaced at the same path rebuilds the
model even without the optional fingerprint() hook (it used to ship the old weights as `load ... cached`)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.errors import ModelFactoryError
from pipeline.load import LoadModel, param_files


def _ctx(tmp_path, params, factory="pipeline.models.tiny:TinyMultimodal"):
    release = SimpleNamespace(model=SimpleNamespace(factory=factory, params=params), seed=0)
    return SimpleNamespace(release=release, base_dir=tmp_path, dataset=SimpleNamespace(root=tmp_path / "no-data"))


def test_a_replaced_checkpoint_changes_the_load_key(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"first weights")
    params = {"checkpoint": "weights.pt", "nested": {"layers": [3, "not a file"]}}
    first = LoadModel().config(_ctx(tmp_path, params))
    assert list(first["param_files"]) == ["checkpoint"]
    assert LoadModel().config(_ctx(tmp_path, params)) == first  # same bytes, same key
    ckpt.write_bytes(b"other weights")  # replaced in place, same path, same params
    assert LoadModel().config(_ctx(tmp_path, params)) != first


def test_param_files_walks_nested_params_and_ignores_what_is_no_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"a")
    (tmp_path / "dir").mkdir()
    found = param_files({"x": [{"ckpt": str(tmp_path / "a.bin")}], "d": str(tmp_path / "dir"), "n": 3,
                         "s": "plain words", "nul": "a\x00b"}, tmp_path)
    assert list(found) == ["x[0].ckpt"] and len(found["x[0].ckpt"]) == 64
    assert param_files({}, tmp_path) == {} and param_files(None, tmp_path) == {}


class _BrokenFingerprint:
    def fingerprint(self, params):
        raise RuntimeError("cannot read the weights index")


def test_a_failing_fingerprint_is_a_one_line_factory_error(tmp_path, monkeypatch):
    import pipeline.load as load

    monkeypatch.setattr(load, "import_factory", lambda name: _BrokenFingerprint())
    with pytest.raises(ModelFactoryError, match="fingerprint\\(\\) failed: RuntimeError: cannot read"):
        LoadModel().config(_ctx(tmp_path, {}, factory="somewhere:Broken"))
