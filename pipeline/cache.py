"""Content-addressed stage cache: (stage, version, config, inputs, calibration, tools) -> .edgepipe/cache/<stage>/<key>/.

Entries are written into a temp dir, fsynced, then renamed into place, so a killed run never leaves a half
entry; a lookup checks the files against what was committed (names, sizes and mtimes recorded at commit; the
files are re-hashed against artifact.json when those differ) and drops an entry that does not match, or whose
artifact.json is not a well-formed artifact, or that is not a directory at all (the stage then runs again).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from .artifact import STAT_FILE, Artifact, canonical_json, check_artifact_json, list_files, sha256_file


def cache_key(stage: str, version: int, config: dict, input_shas: list[str], calibration_fp: str | None,
              tool_versions: dict[str, str]) -> str:
    """Full sha256 over everything that can change a stage's output."""
    payload = {
        "stage": stage, "version": version, "config": config, "inputs": list(input_shas),
        "calibration": calibration_fp, "tools": tool_versions,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _unchanged(path: Path, art: Artifact) -> bool:
    """What it does: an entry dir + its artifact -> whether its files are the ones committed. Fast path: the same
    names, sizes and mtimes as recorded at commit (renames keep mtimes; any write changes them), so a warm build
    does not re-hash hundreds of MB; otherwise every file is re-hashed against artifact.json."""
    files = list_files(path)
    if set(files) != set(art.files):
        return False
    try:
        recorded = json.loads((path / STAT_FILE).read_text())
        if set(recorded) == set(files) and all(
                [p.stat().st_size, p.stat().st_mtime_ns] == recorded[rel] for rel, p in files.items()):
            return True
    except (OSError, ValueError, TypeError):
        pass
    return {rel: sha256_file(p) for rel, p in files.items()} == art.files


def _remove(path: Path) -> None:
    """A cache path of any kind (entry dir, stray file, symlink) -> gone; never follows a link out of the cache."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Memo:
    """Content-addressed sub-results that several stage runs share (e.g. one layer's AdaRound rounding, the same
    in a fused graph and in its image-encoder component): <cache>/_memo/<namespace>/<key>.npz.

    `get` returns the stored arrays or None; `put` writes atomically (temp file, fsync, rename). `claim` takes a
    per-key lock (other processes computing the same key wait or skip it), so concurrent stages split the work.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            raise ValueError(f"memo key must be a sha256 hex digest, got {key!r}")
        return self.root / f"{key}.npz"

    def get(self, key: str) -> dict | None:
        import numpy as np

        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # a damaged entry is recomputed
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, arrays: dict) -> None:
        import numpy as np

        path = self._path(key)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def claim(self, key: str, wait: bool):
        """Hold the key's lock: yields True when held, False when another process holds it and `wait` is off."""
        return _flock(self.root / f"{self._path(key).stem}.lock", wait)


@contextlib.contextmanager
def _flock(lock_path: Path, wait: bool):
    """An exclusive flock on lock_path (created if needed) for the block: yields True when held, False when another
    process holds it and `wait` is off. A killed holder releases it."""
    import fcntl

    with open(lock_path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Cache:
    """A directory of finished stage outputs, one folder per (stage, key)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The cached artifact, or None when absent or corrupt (a corrupt entry is removed)."""
        path = self.entry(stage, key)
        if not (path.exists() or path.is_symlink()):
            return None
        # Entries only appear by an atomic rename of a finished workdir, so anything else at the path is damage.
        if path.is_dir() and not path.is_symlink() and (path / "artifact.json").is_file():
            try:
                data = json.loads((path / "artifact.json").read_text())
                check_artifact_json(data)
                art = Artifact.from_json(data, root=path)
                if art.sha256 == data["sha256"] and _unchanged(path, art):
                    return art
            except (ValueError, TypeError, KeyError, OSError):
                pass
        _remove(path)
        return None

    def memo(self, namespace: str) -> Memo:
        """What it does: a namespace -> the shared sub-result store under <cache>/_memo/<namespace>/."""
        if not re.fullmatch(r"[a-z0-9_]+", namespace):
            raise ValueError(f"memo namespace must be [a-z0-9_]+, got {namespace!r}")
        return Memo(self.root / "_memo" / namespace)

    def _stage_folder(self, stage: str) -> Path:
        folder = self.root / stage
        if folder.is_symlink() or folder.is_file():
            _remove(folder)  # a stray file where the stage's folder belongs
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def new_workdir(self, stage: str) -> Path:
        # the owner's pid in the name: clean_temp() of another build sharing this cache leaves it alone while we live
        return Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self._stage_folder(stage)))

    def claim(self, stage: str, key: str):
        """Hold (stage, key) against every other process using this cache: a second build that needs the same
        stage output waits here, then finds it committed, instead of computing it too."""
        return _flock(self._stage_folder(stage) / f".claim-{key}", wait=True)

    def commit(self, stage: str, key: str, workdir: Path, art: Artifact, replace: bool = False) -> Artifact:
        """Move a finished workdir into place atomically; returns the artifact rooted at its final path.
        replace: a forced re-run (e.g. `--force profile`) supersedes the entry already there (a profile measured
        again must not be thrown away for the old one); the old entry is moved aside first, then removed."""
        (workdir / "artifact.json").write_text(json.dumps(art.to_json(), indent=1, sort_keys=True))
        stats = {rel: [p.stat().st_size, p.stat().st_mtime_ns] for rel, p in list_files(workdir).items()}
        (workdir / STAT_FILE).write_text(json.dumps(stats, sort_keys=True))
        _fsync_tree(workdir)
        final = self.entry(stage, key)
        if replace and (final.exists() or final.is_symlink()):
            old = final.parent / f".tmp-{os.getpid()}-replaced-{final.name}"
            os.rename(final, old)
            _remove(old)
        try:
            os.rename(workdir, final)
        except OSError:
            # Another run finished the same entry first: keep theirs (same key, same content). Anything else there
            # (a stray file, a damaged entry) is removed by lookup, and this run's entry takes its place.
            existing = self.lookup(stage, key)
            if existing is not None:
                shutil.rmtree(workdir, ignore_errors=True)
                return existing
            try:
                os.rename(workdir, final)
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Artifact.from_json(art.to_json(), root=final)

    def clean_temp(self) -> int:
        """Remove temp dirs left by killed runs (their owner pid no longer lives); returns how many. Those of a
        build still running on this cache (another process, or this one) are left alone."""
        n = 0
        for tmp in self.root.glob("*/.tmp-*"):
            owner = re.match(r"\.tmp-(\d+)-", tmp.name)
            if owner is not None and _alive(int(owner.group(1))):
                continue
            _remove(tmp)
            n += 1
        return n


def _alive(pid: int) -> bool:
    """What it does: a pid -> whether a process with it exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    try:  # a killed process whose parent died too can stay a zombie (no reaper in a container): it is gone
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
