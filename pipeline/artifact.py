"""Artifacts: immutable values describing one stage output (files + metadata) -> JSON in the cache and manifest.

An artifact is a directory of files plus `artifact.json`; its sha256 covers the file names and contents, so
two identical outputs have the same identity wherever they live.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .formats import FORMATS, MODEL_KINDS

# A stage's tool logs (toolchain children, pipeline/export/child.py): kept in its cache entry beside the artifact,
# not part of it (they hold timings and paths, so they differ from run to run).
LOG_DIR = "logs"
KINDS = ("torch", *MODEL_KINDS, *(k for f in FORMATS.values() for k in f.intermediate_kinds), "reference",
         "verification", "profile", "sensitivity")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


@dataclass(frozen=True)
class Artifact:
    """One stage output. `files` maps relative names to sha256; `meta` holds stage-specific facts."""

    kind: str
    stage: str
    component: str
    precision: str
    files: dict[str, str]
    parents: tuple[str, ...] = ()
    tool_versions: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)

    @property
    def sha256(self) -> str:
        return sha256_json({"kind": self.kind, "files": self.files, "meta": self.meta})

    def path(self, name: str) -> Path:
        if self.root is None:
            raise ValueError("artifact has no root directory")
        return self.root / name

    @property
    def main_file(self) -> Path:
        return self.path(self.meta.get("main_file") or sorted(self.files)[0])

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("root")
        data["parents"] = list(self.parents)
        data["sha256"] = self.sha256
        return data

    @classmethod
    def from_json(cls, data: dict, root: Path) -> "Artifact":
        data = dict(data)
        data.pop("sha256", None)
        data["parents"] = tuple(data.get("parents", ()))
        return cls(**data, root=root)


def check_artifact_json(data) -> None:
    """What it does: parsed artifact.json -> ValueError unless every field has its type (a hand-edited or damaged
    file can parse as JSON and still hold a list where the files belong)."""
    if not isinstance(data, dict):
        raise ValueError(f"artifact.json holds a {type(data).__name__}, not an object")
    text = {"kind", "stage", "component", "precision", "sha256"}
    maps = {"files": str, "tool_versions": str, "meta": object}
    allowed = text | set(maps) | {"parents"}
    if set(data) - allowed or not (text | {"files"}) <= set(data):
        raise ValueError(f"artifact.json keys {sorted(data)} are not an artifact's")
    for key in text:
        if not isinstance(data[key], str):
            raise ValueError(f"artifact.json: '{key}' is not a string")
    for key, value_type in maps.items():
        value = data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, value_type)
                                                  for k, v in value.items()):
            raise ValueError(f"artifact.json: '{key}' is not an object of {value_type.__name__} values")
    parents = data.get("parents", [])
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ValueError("artifact.json: 'parents' is not a list of strings")


# Written by the cache beside artifact.json: each file's size and mtime at commit (pipeline/cache.py).
STAT_FILE = ".edgepipe-stat.json"


def list_files(root: Path) -> dict[str, Path]:
    """Every regular file under root (relative POSIX name -> path), without artifact.json, the cache's stat file
    and the stage's LOG_DIR/ (tool logs are kept beside an artifact, not part of it)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != "artifact.json":
            rel = path.relative_to(root).as_posix()
            if rel != STAT_FILE and not rel.startswith(f"{LOG_DIR}/"):
                out[rel] = path
    return out


def collect_files(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (relative POSIX names), excluding artifact.json."""
    return {rel: sha256_file(path) for rel, path in list_files(root).items()}
