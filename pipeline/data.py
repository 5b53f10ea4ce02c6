"""Datasets under calibration_data/<name>/: raw splits (npz) -> model inputs through the IOSpec's preprocessing.

A dataset directory holds `train.npz`, `calibration.npz`, `eval.npz` (raw fields + `label`), `dataset.json`
and whatever its preprocessing refers to (e.g. `vocab.txt`). Arrays are loaded with allow_pickle=False.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputSpecError
from .iospec import (AudioPreprocessing, ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing, image_hwc,
                     raw_sample_shape)

SPLITS = ("train", "calibration", "eval")
# Preprocessed splits per process, shared by every Dataset bound to the same directory and IOSpec: a worker process
# that runs many stages (pipeline/executor) preprocesses a split once, and a Dataset pickles without its arrays.
_SPLITS: dict[tuple, "Split"] = {}
_SPLITS_MAX = 8


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
    asset_root: Path | None = None  # where preprocessing assets (vocabularies) live; None: root
    store: Path | None = None  # where preprocessed splits are kept between processes and builds (the stage cache)
    _cache: dict[str, Split] = field(default_factory=dict)

    @property
    def meta(self) -> dict:
        path = self.root / "dataset.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def split_fingerprint(self, name: str) -> str:
        """sha256 of everything a split's inputs are made from (no preprocessing): the raw split file, the files
        it refers to (photos), the preprocessing assets (vocabularies) and the IOSpec."""
        path = split_path(self.root, name)
        h = hashlib.sha256(file_sha256(path).encode())
        h.update(self.iospec.model_dump_json().encode())
        for ref in sorted(_referenced_files(self, path)):
            h.update(f"|{ref.relative_to(self.root) if ref.is_relative_to(self.root) else ref}|".encode())
            h.update(file_sha256(ref).encode() if ref.is_file() else b"missing")
        return h.hexdigest()

    def split(self, name: str) -> Split:
        if name not in self._cache:
            path = split_path(self.root, name)
            stat = path.stat() if path.is_file() else None  # a rewritten file is a new split
            memo = (str(self.root), str(self.asset_root), self.iospec.model_dump_json(), name,
                    stat and (stat.st_mtime_ns, stat.st_size, stat.st_ino))
            if memo not in _SPLITS:
                while len(_SPLITS) >= _SPLITS_MAX:
                    _SPLITS.pop(next(iter(_SPLITS)))
                _SPLITS[memo] = self._stored_split(name) if self.store is not None else \
                    load_split(self.root, name, self.iospec, self.asset_root)
            self._cache[name] = _SPLITS[memo]
        return self._cache[name]

    def _stored_split(self, name: str) -> "Split":
        """What it does: a split -> its preprocessed arrays from the store (memory-mapped, read-only), made and
        stored first when absent. Keyed by the split's fingerprint and the preprocessing code, so a changed photo,
        vocabulary, IOSpec or edgepipe version makes a new entry."""
        key = hashlib.sha256(f"{self.split_fingerprint(name)}|{_preprocessing_code()}".encode()).hexdigest()
        entry = Path(self.store) / key
        if not (entry / "split.json").is_file():
            split = load_split(self.root, name, self.iospec, self.asset_root)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=_mkdir(Path(self.store))))
            for k, v in split.inputs.items():
                np.save(tmp / f"input.{k}.npy", v)
            if split.labels is not None:
                np.save(tmp / "labels.npy", split.labels)
            (tmp / "split.json").write_text(json.dumps({"inputs": list(split.inputs), "name": name,
                                                        "fingerprint": split.fingerprint}))
            try:
                os.rename(tmp, entry)
            except OSError:  # another process stored it first: same key, same arrays
                shutil.rmtree(tmp, ignore_errors=True)
            return split
        meta = json.loads((entry / "split.json").read_text())
        inputs = {k: np.load(entry / f"input.{k}.npy", mmap_mode="r") for k in meta["inputs"]}
        labels = np.load(entry / "labels.npy") if (entry / "labels.npy").is_file() else None
        return Split(name=name, inputs=inputs, labels=labels, fingerprint=meta["fingerprint"])

    def __getstate__(self) -> dict:
        # sent to worker processes as a description: the arrays are rebuilt (once per process) where needed
        return {**self.__dict__, "_cache": {}}

    def sub(self, name: str, iospec: IOSpec) -> "Dataset":
        """What it does: a sub-directory (a side component's own data) -> a Dataset bound to that component's
        IOSpec, sharing this dataset's preprocessing assets."""
        root = self.root / name
        if not root.is_dir():
            raise ConfigError(f"dataset directory {root} (data of a side component) does not exist")
        return Dataset(root=root, iospec=iospec, asset_root=self.asset_root or self.root, store=self.store)


def open_dataset(root: Path, iospec: IOSpec, store: Path | None = None) -> Dataset:
    """What it does: a dataset directory + IOSpec -> a Dataset; `store` keeps its preprocessed splits on disk."""
    if not root.is_dir():
        raise ConfigError(f"dataset directory {root} does not exist; create it or fix model.dataset in the config")
    return Dataset(root=root, iospec=iospec, store=store)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _preprocessing_code() -> str:
    """What it does: -> sha256 of the modules that turn raw data into model inputs (a changed one is a new entry)."""
    from . import iospec as iospec_module
    from . import wordpiece

    h = hashlib.sha256()
    for module in (sys.modules[__name__], iospec_module, wordpiece):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def _referenced_files(dataset: "Dataset", split_file: Path) -> list[Path]:
    """What it does: a split file -> the files its inputs are read from besides itself: image files named in its
    fields, vocabulary files of the IOSpec's tokenizers."""
    refs = []
    assets = dataset.asset_root or dataset.root
    for spec in dataset.iospec.inputs:
        pre = spec.preprocessing
        if isinstance(pre, TokenizerPreprocessing) and pre.vocab_file:
            refs.append(assets / pre.vocab_file)
    if any(isinstance(s.preprocessing, ImagePreprocessing) for s in dataset.iospec.inputs) and split_file.is_file():
        try:
            with np.load(split_file, allow_pickle=False) as npz:
                for spec in dataset.iospec.inputs:
                    name = spec.source_field or spec.name
                    if isinstance(spec.preprocessing, ImagePreprocessing) and name in npz.files:
                        value = npz[name]
                        if value.dtype.kind == "U":
                            refs.extend(dataset.root / str(p) for p in sorted(set(value.tolist())))
        except (ValueError, OSError, zipfile.BadZipFile):
            pass  # an unreadable split is reported when it is loaded
    return refs


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


def load_split(root: Path, split: str, iospec: IOSpec, asset_root: Path | None = None) -> Split:
    """What it does: <root>/<split>.npz + IOSpec -> model-ready inputs and labels. Preprocessing assets (a
    vocabulary) are looked up under `asset_root` (default: root)."""
    raw = load_raw(root, split)
    path = split_path(root, split)
    for spec in iospec.inputs:
        field_name = spec.source_field or spec.name
        if field_name not in raw:
            raise InputSpecError(
                f"{path} has no field '{field_name}' for input '{spec.name}' (fields: {', '.join(sorted(raw))})"
            )
        check_raw_field(path, field_name, raw[field_name], spec)
    labels = raw.get("label")
    if labels is not None and (labels.ndim != 1 or labels.dtype.kind not in "iu"):
        raise InputSpecError(f"{path}: field 'label' is {labels.dtype}{list(labels.shape)}; labels are one integer "
                             "class index per sample (a [N] int array, -1 = unlabelled)")
    check_sample_counts(path, raw, [s.source_field or s.name for s in iospec.inputs] + ["label"])
    inputs = {}
    for spec in iospec.inputs:
        field_name = spec.source_field or spec.name
        value = raw[field_name]
        if isinstance(spec.preprocessing, ImagePreprocessing) and value.dtype.kind == "U":
            value = load_image_files(root, raw, field_name, spec)
        inputs[spec.name] = preprocess(spec, value, asset_root or root)
    fingerprint = Dataset(root, iospec).split_fingerprint(split)
    return Split(name=split, inputs=inputs, labels=None if labels is None else labels.astype(np.int64),
                 fingerprint=fingerprint)


def check_sample_counts(path: Path, raw: dict[str, np.ndarray], fields: list[str]) -> None:
    """What it does: a split's raw fields -> InputSpecError unless the named ones (those present) hold one entry
    per sample each (a shorter field would shift or cut every sample after it)."""
    counts = {name: (len(raw[name]) if raw[name].ndim else None) for name in dict.fromkeys(fields) if name in raw}
    if len(set(counts.values())) > 1 or None in counts.values():
        listed = ", ".join(f"{name}: {'a scalar' if n is None else n}" for name, n in counts.items())
        raise InputSpecError(f"{path}: fields hold different sample counts ({listed}); every field needs one entry "
                             "per sample along its first axis")


def check_raw_field(path: Path, field_name: str, value: np.ndarray, spec: TensorSpec) -> None:
    """What it does: a raw dataset field + the input made from it -> InputSpecError naming the file, the field and
    the expected vs the stored per-sample shape (e.g. CHW images where the preprocessing takes HWC)."""
    paths = isinstance(spec.preprocessing, ImagePreprocessing) and value.dtype.kind == "U"
    want = raw_sample_shape(spec, stored_as_paths=paths)
    got = tuple(value.shape[1:])
    if value.ndim >= 1 and len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got)):
        return
    if isinstance(spec.preprocessing, ImagePreprocessing) and not paths:
        h, w, c = want
        hint = " (the data looks CHW: transpose it with x.transpose(0, 2, 3, 1))" if got == (c, h, w) else ""
        expected = (f"{tuple(spec.shape[1:])} ({spec.layout or 'NHWC'}) made from HWC images, so the field needs "
                    f"[N, {h}, {w}, {c}]{hint}")
    elif paths:
        expected = "one image path per sample (a [N] string array)"
    elif isinstance(spec.preprocessing, AudioPreprocessing):
        expected = "one waveform per sample (a [N, samples] array)"
    elif isinstance(spec.preprocessing, TokenizerPreprocessing):
        expected = "one text per sample (a [N] string array)"
    else:
        expected = f"{tuple(spec.shape[1:])} per sample"
    stored = "a scalar" if value.ndim == 0 else f"per-sample shape {got}"
    raise InputSpecError(f"{path}: field '{field_name}' has {stored}; input '{spec.name}' expects {expected}")


def load_image_files(root: Path, raw: dict[str, np.ndarray], field_name: str, spec: TensorSpec) -> np.ndarray:
    """What it does: photo paths (relative to the dataset dir) + optional per-sample augmentation fields
    -> uint8 [N, H, W, 3] RGB at the spec's size.

    `<field>_crop` int [N, 4] (x0, y0, x1, y1) boxes in the stored photo (default: the centre crop a device does:
    resize the shorter side to `resize_shorter`, crop the middle), `<field>_flip` int [N] (1 = mirror left-right),
    `<field>_jitter` float [N, 3] (brightness, contrast, saturation factors). Crops are resized bicubic.
    """
    try:
        from PIL import Image, ImageEnhance
    except ImportError as err:  # pillow is a core dependency; a broken install says so in one line
        raise InputSpecError("image files in the dataset need pillow: pip install pillow") from err
    height, width, _ = image_hwc(spec)
    paths = raw[field_name]
    crops, flips, jitters = (raw.get(f"{field_name}_{k}") for k in ("crop", "flip", "jitter"))
    for name, arr, cols in (("crop", crops, 4), ("flip", flips, None), ("jitter", jitters, 3)):
        if arr is not None and (len(arr) != len(paths) or (cols and arr.shape[1:] != (cols,))):
            raise InputSpecError(f"dataset field '{field_name}_{name}' has shape {arr.shape}, expected "
                                 f"[{len(paths)}{', ' + str(cols) if cols else ''}]")
    out = np.empty((len(paths), height, width, 3), np.uint8)
    opened: dict[str, object] = {}
    for i, rel in enumerate(paths):
        path = root / str(rel)
        if str(rel) not in opened:
            try:
                with Image.open(path) as im:
                    opened[str(rel)] = im.convert("RGB")
            except (OSError, ValueError) as err:
                raise InputSpecError(f"cannot read image {path}: {err}") from err
        img = opened[str(rel)]
        box = tuple(int(v) for v in crops[i]) if crops is not None else _centre_box(img.size, height, width,
                                                                                    spec.preprocessing)
        img = img.crop(box).resize((width, height), Image.BICUBIC)
        if flips is not None and flips[i]:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if jitters is not None:
            for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color),
                                        jitters[i]):
                if float(factor) != 1.0:
                    img = enhancer(img).enhance(float(factor))
        out[i] = np.asarray(img, dtype=np.uint8)
    return out


def _centre_box(size: tuple[int, int], height: int, width: int, pre: ImagePreprocessing) -> tuple[int, ...]:
    """What it does: photo (w, h) -> the centre box a device crops after resizing the shorter side to
    `resize_shorter` (in the photo's own pixels)."""
    w, h = size
    shorter = pre.resize_shorter or min(height, width)
    scale = min(w, h) / shorter
    cw, ch = round(width * scale), round(height * scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return x0, y0, x0 + cw, y0 + ch


def preprocess(spec: TensorSpec, raw: np.ndarray, root: Path) -> np.ndarray:
    """Raw dataset field (N, ...) -> model input (N, *spec.shape[1:]) in spec.dtype."""
    pre = spec.preprocessing
    if isinstance(pre, ImagePreprocessing):
        x = raw.astype(np.float32) * np.float32(pre.scale)
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if spec.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        out = np.ascontiguousarray(x)
    elif isinstance(pre, TokenizerPreprocessing) and pre.algorithm == "wordpiece":
        from .wordpiece import WordPieceTokenizer

        vocab = root / pre.vocab_file
        if not vocab.is_file():
            raise ConfigError(f"vocabulary file {vocab} is missing")
        ids, mask = WordPieceTokenizer.from_file(vocab).encode([str(t) for t in raw], pre.max_length)
        out = mask if pre.output == "mask" else ids
    elif isinstance(pre, TokenizerPreprocessing):
        ids = tokenize(list(raw), load_vocab(root / pre.vocab_file), pre)
        out = (ids != pre.pad_id).astype(np.int64) if pre.output == "mask" else ids
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
