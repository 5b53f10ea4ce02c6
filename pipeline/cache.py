"""Content-addressed stage cache: (stage, version, config, inputs, calibration, tools) -> .edgepipe/cache/<stage>/<key>/.

Entries are written into a temp dir, fsynced, then renamed into place, so a killed run never leaves a half
entry; a lookup re-hashes the files and drops an entry that does not match its artifact.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .artifact import Artifact, canonical_json, collect_files


def cache_key(stage: str, version: int, config: dict, input_shas: list[str], calibration_fp: str | None,
              tool_versions: dict[str, str]) -> str:
    """Full sha256 over everything that can change a stage's output."""
    payload = {
        "stage": stage, "version": version, "config": config, "inputs": list(input_shas),
        "calibration": calibration_fp, "tools": tool_versions,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


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


class Cache:
    """A directory of finished stage outputs, one folder per (stage, key)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str) -> Artifact | None:
        """The cached artifact, or None when absent or corrupt (a corrupt entry is removed)."""
        path = self.entry(stage, key)
        meta = path / "artifact.json"
        if not meta.is_file():
            return None
        try:
            art = Artifact.from_json(json.loads(meta.read_text()), root=path)
            if collect_files(path) == art.files:
                return art
        except (ValueError, TypeError, KeyError, OSError):
            pass
        shutil.rmtree(path, ignore_errors=True)
        return None

    def new_workdir(self, stage: str) -> Path:
        (self.root / stage).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root / stage))

    def commit(self, stage: str, key: str, workdir: Path, art: Artifact, replace: bool = False) -> Artifact:
        """Move a finished workdir into place atomically; returns the artifact rooted at its final path.
        replace: a forced re-run (e.g. `--force profile`) supersedes the entry already there (a profile measured
        again must not be thrown away for the old one); the old entry is moved aside first, then removed."""
        (workdir / "artifact.json").write_text(json.dumps(art.to_json(), indent=1, sort_keys=True))
        _fsync_tree(workdir)
        final = self.entry(stage, key)
        if replace and final.exists():
            old = final.parent / f".tmp-replaced-{final.name}-{os.getpid()}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(workdir, final)
        except OSError:
            # Another run finished the same entry first; keep theirs (same key, same content).
            shutil.rmtree(workdir, ignore_errors=True)
            existing = self.lookup(stage, key)
            if existing is None:
                raise
            return existing
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return Artifact.from_json(art.to_json(), root=final)

    def clean_temp(self) -> int:
        """Remove temp dirs left by killed runs; returns how many."""
        n = 0
        for tmp in self.root.glob("*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
            n += 1
        return n
