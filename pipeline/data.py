"""Datasets under calibration_data/<name>/: raw splits (npz) -> model inputs through the IOSpec's preprocessing.

A dataset directory holds `train.npz`, `calibration.npz`, `eval.npz` (raw fields + `label`), `dataset.json`
and whatever its preprocessing refers to (e.g. `vocab.txt`). Arrays are loaded with allow_pickle=False.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputSpecError
from .iospec import AudioPreprocessing, ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing

SPLITS = ("train", "calibration", "eval")


@dataclass
class Split:
    """One split: model-ready inputs (name -> array with a leading sample axis) and integer labels."""

    name: str
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    fingerprint: str

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """Sample i as batch-1 arrays, as every exported model takes them."""
        return {k: v[i : i + 1] for k, v in self.inputs.items()}


@dataclass
class Dataset:
    """A dataset directory bound to an IOSpec."""

    root: Path
    iospec: IOSpec
    _cache: dict[str, Split] = field(default_factory=dict)

    @property
    def meta(self) -> dict:
        path = self.root / "dataset.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def split_fingerprint(self, name: str) -> str:
        """sha256 of the raw split file and the IOSpec (cheap: no preprocessing)."""
        h = hashlib.sha256(file_sha256(split_path(self.root, name)).encode())
        h.update(self.iospec.model_dump_json().encode())
        return h.hexdigest()

    def split(self, name: str) -> Split:
        if name not in self._cache:
            self._cache[name] = load_split(self.root, name, self.iospec)
        return self._cache[name]


def open_dataset(root: Path, iospec: IOSpec) -> Dataset:
    if not root.is_dir():
        raise ConfigError(f"dataset directory {root} does not exist; create it or fix model.dataset in the config")
    return Dataset(root=root, iospec=iospec)


def split_path(root: Path, split: str) -> Path:
    return root / f"{split}.npz"


def load_raw(root: Path, split: str) -> dict[str, np.ndarray]:
    path = split_path(root, split)
    if not path.is_file():
        raise ConfigError(f"{path} is missing; every dataset needs {', '.join(s + '.npz' for s in SPLITS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path} is not a readable npz without pickles: {err}") from err


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_split(root: Path, split: str, iospec: IOSpec) -> Split:
    raw = load_raw(root, split)
    inputs = {}
    for spec in iospec.inputs:
        field_name = spec.source_field or spec.name
        if field_name not in raw:
            raise InputSpecError(
                f"{split_path(root, split)} has no field '{field_name}' for input '{spec.name}' "
                f"(fields: {', '.join(sorted(raw))})"
            )
        inputs[spec.name] = preprocess(spec, raw[field_name], root)
    labels = raw.get("label")
    fingerprint = Dataset(root, iospec).split_fingerprint(split)
    return Split(name=split, inputs=inputs, labels=None if labels is None else labels.astype(np.int64),
                 fingerprint=fingerprint)


def preprocess(spec: TensorSpec, raw: np.ndarray, root: Path) -> np.ndarray:
    """Raw dataset field (N, ...) -> model input (N, *spec.shape[1:]) in spec.dtype."""
    pre = spec.preprocessing
    if isinstance(pre, ImagePreprocessing):
        x = raw.astype(np.float32) * np.float32(pre.scale)
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        out = np.ascontiguousarray(x)
    elif isinstance(pre, TokenizerPreprocessing):
        out = tokenize(list(raw), load_vocab(root / pre.vocab_file), pre)
    elif isinstance(pre, AudioPreprocessing):
        x = raw.astype(np.float32) * np.float32(pre.scale)
        n = pre.num_samples
        x = x[:, :n] if x.shape[1] >= n else np.pad(x, ((0, 0), (0, n - x.shape[1])))
        out = np.ascontiguousarray(x)
    else:
        out = raw
    out = out.astype(spec.dtype, copy=False)
    if tuple(out.shape[1:]) != tuple(spec.shape[1:]):
        raise InputSpecError(
            f"input '{spec.name}': dataset gives per-sample shape {tuple(out.shape[1:])}, "
            f"the IOSpec expects {tuple(spec.shape[1:])}"
        )
    return out


def load_vocab(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise ConfigError(f"vocabulary file {path} is missing")
    words = path.read_text(encoding="utf-8").splitlines()
    return {w: i for i, w in enumerate(words)}


_WORD = re.compile(r"[a-z0-9']+|[^\sa-z0-9']", re.IGNORECASE)


def tokenize(texts: list[str], vocab: dict[str, int], pre: TokenizerPreprocessing) -> np.ndarray:
    """Whitespace/punctuation word tokenizer: text -> fixed-length ids, padded with pad_id."""
    out = np.full((len(texts), pre.max_length), pre.pad_id, dtype=np.int64)
    for i, text in enumerate(texts):
        text = str(text).lower() if pre.lowercase else str(text)
        ids = [vocab.get(w, pre.unk_id) for w in _WORD.findall(text)][: pre.max_length]
        out[i, : len(ids)] = ids
    return out
