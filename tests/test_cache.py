"""Stage cache: keys change with every component, entries are atomic, corrupt entries are dropped."""
from __future__ import annotations

import json

import pytest

from pipeline.artifact import Artifact, collect_files
from pipeline.cache import Cache, cache_key

BASE = dict(stage="s", version=1, config={"a": 1}, input_shas=["x"], calibration_fp="c", tool_versions={"t": "1"})


@pytest.mark.parametrize("field,value", [
    ("stage", "other"), ("version", 2), ("config", {"a": 2}), ("input_shas", ["y"]),
    ("calibration_fp", "d"), ("tool_versions", {"t": "2"}),
])
def test_key_changes_with_each_component(field, value):
    assert cache_key(**{**BASE, field: value}) != cache_key(**BASE)


def test_key_ignores_dict_order():
    a = cache_key(**{**BASE, "config": {"a": 1, "b": 2}})
    b = cache_key(**{**BASE, "config": {"b": 2, "a": 1}})
    assert a == b and len(a) == 64


def _commit(cache: Cache, key: str, payload: bytes = b"hello") -> Artifact:
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(payload)
    art = Artifact(kind="onnx", stage="s", component="model", precision="fp32", files=collect_files(work),
                   meta={"main_file": "f.bin"}, root=work)
    return cache.commit("s", key, work, art)


def test_commit_and_lookup(tmp_path):
    cache = Cache(tmp_path)
    art = _commit(cache, "k")
    hit = cache.lookup("s", "k")
    assert hit == art and hit.main_file.read_bytes() == b"hello"
    assert not list((tmp_path / "s").glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_meta", "bad_json"])
def test_corrupt_entry_is_dropped(tmp_path, damage):
    cache = Cache(tmp_path)
    _commit(cache, "k")
    entry = cache.entry("s", "k")
    if damage == "flip":
        data = bytearray((entry / "f.bin").read_bytes())
        data[0] ^= 1
        (entry / "f.bin").write_bytes(bytes(data))
    elif damage == "truncate":
        (entry / "f.bin").write_bytes(b"hel")
    elif damage == "no_meta":
        (entry / "artifact.json").unlink()
    else:
        (entry / "artifact.json").write_text("{not json")
    assert cache.lookup("s", "k") is None
    if damage != "no_meta":
        assert not entry.exists()


def test_half_written_temp_dirs_are_ignored_and_cleaned(tmp_path):
    cache = Cache(tmp_path)
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(b"partial")
    assert cache.lookup("s", "k") is None
    assert cache.clean_temp() == 1 and not work.exists()


def test_artifact_json_roundtrip(tmp_path):
    art = _commit(Cache(tmp_path), "k")
    data = json.loads((art.root / "artifact.json").read_text())
    assert data["sha256"] == art.sha256 and Artifact.from_json(data, art.root) == art


def test_a_forced_rerun_replaces_the_entry_and_a_plain_one_keeps_the_first(tmp_path):
    """`--force profile` measures again: its result must be what the cache (and the bundle) holds afterwards; two
    ordinary runs racing for one key keep the first (same key, same content)."""
    cache = Cache(tmp_path)
    _commit(cache, "k", b"first")
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(b"second")
    art = Artifact(kind="onnx", stage="s", component="model", precision="fp32", files=collect_files(work),
                   meta={"main_file": "f.bin"}, root=work)
    kept = cache.commit("s", "k", work, art)
    assert kept.main_file.read_bytes() == b"first"
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(b"third")
    art = Artifact(kind="onnx", stage="s", component="model", precision="fp32", files=collect_files(work),
                   meta={"main_file": "f.bin"}, root=work)
    new = cache.commit("s", "k", work, art, replace=True)
    assert new.main_file.read_bytes() == b"third" and cache.lookup("s", "k").main_file.read_bytes() == b"third"
    assert not list((tmp_path / "s").glob(".tmp-*"))
