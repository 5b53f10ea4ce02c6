"""The executor seam: stage units run in worker processes; a crash fails one unit; exclusive units run alone."""
from __future__ import annotations

import json
import os
import time

import pytest

from pipeline.errors import StageError
from pipeline.executor import StageUnit, make_executor
from pipeline.executor.local import WorkerCrash
from pipeline.progress import Progress
from pipeline.stages import StageContext


class _Events(Progress):
    """A progress sink that records the task events forwarded from workers."""

    def __init__(self):
        super().__init__(enabled=False)
        self.events = []

    def task(self, description, total):
        events = self.events
        events.append(("start", description, total))

        class _T:
            def advance(self, n=1):
                events.append(("advance", n))

            def close(self):
                events.append(("close",))

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()

        return _T()


def _unit(tmp_path, stage: str, key: str, **release) -> StageUnit:
    ctx = StageContext(release=release, base_dir=tmp_path, iospec=None, dataset=None, progress=None)
    return StageUnit.make(stage, key * 64, None, ctx, tmp_path / "cache", ref=f"tests.executor_stages:{stage}",
                          label=f"t-{key}", exclusive=bool(release.get("exclusive")))


def _note(art) -> dict:
    return json.loads(art.path("note.json").read_text())


def test_units_run_in_worker_processes_and_commit_to_the_cache(tmp_path):
    progress = _Events()
    with make_executor(2, progress) as ex:
        arts = [ex.submit(_unit(tmp_path, "Note", k, label=k)).result()[0] for k in "ab"]
    assert all(_note(a)["pid"] != os.getpid() for a in arts)
    assert [a.meta["label"] for a in arts] == ["a", "b"]
    assert all((tmp_path / "cache" / "Note" / (k * 64) / "note.json").is_file() for k in "ab")
    # progress bars opened in the worker reach this process's sink
    assert progress.events.count(("start", "note", 2)) == 2 and ("advance", 2) in progress.events


def test_a_native_crash_fails_only_its_unit_and_the_worker_is_replaced(tmp_path):
    with make_executor(2, Progress(enabled=False)) as ex:
        crash = ex.submit(_unit(tmp_path, "Segfault", "c"))
        fine = ex.submit(_unit(tmp_path, "Note", "d", sleep_s=0.5))
        with pytest.raises(WorkerCrash, match=r"stage Segfault \(t-c\) crashed its worker process \(SIGSEGV\)"):
            crash.result()
        assert fine.result()[0].meta == {"label": ""}
        after = [ex.submit(_unit(tmp_path, "Note", k)) for k in "ef"]  # both slots work again
        assert all(f.result()[0].kind == "torch" for f in after)
    assert not (tmp_path / "cache" / "Segfault" / ("c" * 64)).exists()  # nothing committed for the crashed unit


def test_stage_errors_keep_their_class_and_message(tmp_path):
    with make_executor(1, Progress(enabled=False)) as ex:
        with pytest.raises(StageError, match="converter said no") as info:
            ex.submit(_unit(tmp_path, "Fails", "g")).result()
    assert not isinstance(info.value, WorkerCrash)
    assert any("worker traceback" in note for note in getattr(info.value, "__notes__", []))


def test_an_exclusive_unit_runs_while_nothing_else_runs(tmp_path):
    with make_executor(2, Progress(enabled=False)) as ex:
        first = [ex.submit(_unit(tmp_path, "Note", k, sleep_s=0.4)) for k in "hi"]
        time.sleep(0.05)
        alone = ex.submit(_unit(tmp_path, "Note", "j", sleep_s=0.3, exclusive=True))
        later = [ex.submit(_unit(tmp_path, "Note", k, sleep_s=0.3)) for k in "kl"]
        notes = {k: _note(f.result()[0]) for k, f in zip("hijkl", first + [alone] + later)}
    j = notes["j"]
    for k in "hikl":
        assert notes[k]["end"] <= j["start"] or notes[k]["start"] >= j["end"], (k, notes[k], j)
    # shared units waiting in the queue go first: the exclusive one starts after all of them
    assert all(notes[k]["end"] <= j["start"] for k in "hikl")


def test_inline_executor_runs_in_this_process(tmp_path):
    with make_executor(0, Progress(enabled=False)) as ex:
        art, _ = ex.submit(_unit(tmp_path, "Note", "m")).result()
    assert _note(art)["pid"] == os.getpid()
