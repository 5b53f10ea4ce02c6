"""Stage cache: keys change with every component, entries are atomic, corrupt entries are dropped."""
from __future__ import annotations

import json
from pathlib import Path

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
    assert not entry.exists()  # entries appear only by an atomic rename, so a folder without artifact.json is damage


def test_half_written_temp_dirs_are_ignored_and_cleaned(tmp_path):
    cache = Cache(tmp_path)
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(b"partial")
    assert cache.lookup("s", "k") is None
    assert cache.clean_temp() == 0 and work.exists()  # its owner (this process) still lives
    left = work.rename(work.with_name(f".tmp-{_dead_pid()}-xyz"))  # as a killed build leaves it
    assert cache.clean_temp() == 1 and not left.exists()


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


@pytest.mark.parametrize("change", [
    lambda d: {**d, "files": sorted(d["files"])},  # a list where the file hashes belong
    lambda d: {**d, "meta": "oops"},
    lambda d: {**d, "parents": "abc"},
    lambda d: {**d, "tool_versions": ["t"]},
    lambda d: {**d, "kind": 3},
    lambda d: {k: v for k, v in d.items() if k != "files"},
    lambda d: {**d, "extra": 1},
    lambda d: {**d, "meta": {**d["meta"], "main_file": "other.bin"}},  # no longer matches its sha256
    lambda d: [d],
    lambda d: "artifact",
    lambda d: None,
])
def test_well_formed_json_with_wrong_content_is_dropped(tmp_path, change):
    """artifact.json that parses but is not an artifact's (wrong types, missing or extra keys, edited meta) used
    to come back as a hit (or crash the lookup) and wedge every later build."""
    cache = Cache(tmp_path)
    _commit(cache, "k")
    entry = cache.entry("s", "k")
    data = json.loads((entry / "artifact.json").read_text())
    (entry / "artifact.json").write_text(json.dumps(change(data)))
    assert cache.lookup("s", "k") is None and not entry.exists()
    assert _commit(cache, "k", b"again").main_file.read_bytes() == b"again"  # the stage's rerun takes its place
    assert cache.lookup("s", "k").main_file.read_bytes() == b"again"


@pytest.mark.parametrize("stray", ["file", "symlink", "dir_without_meta", "meta_is_a_dir"])
def test_stray_thing_at_the_entry_path_is_removed_and_replaced(tmp_path, stray):
    cache = Cache(tmp_path)
    entry = cache.entry("s", "k")
    entry.parent.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    if stray == "file":
        entry.write_text("stray")
    elif stray == "symlink":
        entry.symlink_to(outside)
    elif stray == "dir_without_meta":
        entry.mkdir()
        (entry / "f.bin").write_bytes(b"hello")
    else:
        (entry / "artifact.json").mkdir(parents=True)
    assert cache.lookup("s", "k") is None
    assert not entry.exists() and not entry.is_symlink()
    assert (outside / "keep.txt").read_text() == "not the cache's"  # a link is removed, never followed
    assert _commit(cache, "k").main_file.read_bytes() == b"hello"


@pytest.mark.parametrize("replace", [False, True])
def test_commit_copes_with_a_stray_file_at_the_entry_path(tmp_path, replace):
    """The run found nothing (or was forced) and must still be able to put its entry in place."""
    cache = Cache(tmp_path)
    work = cache.new_workdir("s")
    (work / "f.bin").write_bytes(b"fresh")
    art = Artifact(kind="onnx", stage="s", component="model", precision="fp32", files=collect_files(work),
                   meta={"main_file": "f.bin"}, root=work)
    cache.entry("s", "k").write_text("stray")
    committed = cache.commit("s", "k", work, art, replace=replace)
    assert committed.main_file.read_bytes() == b"fresh" and cache.lookup("s", "k") == committed
    assert not list((tmp_path / "s").glob(".tmp-*"))


def test_a_file_where_a_stage_folder_belongs_is_replaced(tmp_path):
    cache = Cache(tmp_path)
    (tmp_path / "s").write_text("stray")
    assert cache.lookup("s", "k") is None
    assert _commit(cache, "k").main_file.read_bytes() == b"hello"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel hands it out again, which takes a while)


def test_clean_temp_removes_what_killed_runs_left_and_keeps_what_live_builds_work_in(tmp_path):
    cache = Cache(tmp_path)
    mine = cache.new_workdir("s")  # this process lives: another build's clean_temp must not take it away
    dead = _dead_pid()
    (tmp_path / "s" / f".tmp-{dead}-replaced-k").write_text("left by a killed forced rerun")
    (tmp_path / "s" / f".tmp-{dead}-abcd").mkdir()
    (tmp_path / "s" / ".tmp-old-style").mkdir()  # no owner in the name: an older build's leftover
    assert cache.clean_temp() == 3
    assert [p.name for p in (tmp_path / "s").glob(".tmp-*")] == [mine.name]


def test_a_second_process_waits_for_the_stage_another_holds_then_finds_it(tmp_path):
    import subprocess
    import sys
    import time

    cache = Cache(tmp_path)
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from pipeline.cache import Cache; "
            "c = Cache(sys.argv[1]); t = time.monotonic()\n"
            "with c.claim('s', 'k'):\n    print(round(time.monotonic() - t, 1), c.lookup('s', 'k') is not None)")
    with cache.claim("s", "k"):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(Path(__file__).parent.parent)],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert proc.poll() is None, "the other process should wait while the stage is claimed"
        _commit(cache, "k")
    waited, found = proc.communicate(timeout=30)[0].split()
    assert float(waited) >= 0.9 and found == "True"


def test_a_temp_dir_of_a_zombie_owner_is_left_over_and_removed(tmp_path):
    """A SIGKILLed build's workers can stay zombies when nothing reaps them (a container without an init): their
    temp dirs are leftovers all the same."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        cache = Cache(tmp_path)
        (tmp_path / "s" / f".tmp-{proc.pid}-abc").mkdir(parents=True)
        assert cache.clean_temp() == 1 and not list((tmp_path / "s").glob(".tmp-*"))
    finally:
        proc.wait()
