"""Generate the synthetic "smart camera" dataset: a seed -> calibration_data/tiny_mm/{train,calibration,eval}.npz,
vocab.txt, labels.txt and dataset.json, byte-identical on every run.

Each sample is one camera event with three modalities, each carrying one hidden "suspicious cue" bit:

- image  uint8 [24, 24, 3] HWC: a tall blob (a person, cue) or a wide blob (a vehicle) of random size, tilt,
  outline (ellipse .. rounded box), position and colour on a noisy shaded background;
- text   a short operator note (<= 12 words) naming the camera zone: a restricted (cue) or a public keyword
  among distractor words, in a random template;
- audio  int16 [512] at 4000 Hz: a main tone in the high band (glass break / siren, cue) or the low band
  (engine / ventilation hum) with random frequency, phase and amplitude, a weaker tone from the other band,
  white noise, 12-bit ADC steps.

label = image_bit + text_bit + audio_bit: the alert level is the number of cues (0 none .. 3 high). Knowing any
one or two modalities leaves two adjacent levels equally likely (at best 50 % accuracy), so the model must fuse
all three. (An XOR rule, 2 * zone + (shape XOR band), was tried first: the towers never discovered their
features through the XOR from 1500 samples, and the model stayed at chance on that bit.)

Run `python tools/make_dataset.py` from the repo root; `--out` writes elsewhere (the tests regenerate into a
temp dir and compare bytes).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 20240611
SPLIT_COUNTS = {"train": 1500, "calibration": 400, "eval": 600}
IMAGE_SIZE = 24
SAMPLE_RATE_HZ = 4000
NUM_SAMPLES = 512
MAX_NPZ_BYTES = 4_000_000
ADC_STEP = 16  # 12-bit microphone ADC in an int16 container: smaller npz, realistic
LOW_BAND_HZ = (250, 700)
HIGH_BAND_HZ = (950, 1700)
SNR_DB = (-8, 12)
CLASS_NAMES = ("alert_none", "alert_low", "alert_medium", "alert_high")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "calibration_data" / "tiny_mm"

# text_bit 0 = public zone, 1 = restricted zone (a cue).
PUBLIC_WORDS = ("lobby", "street", "garden", "cafeteria", "parking", "entrance", "hallway", "plaza", "reception",
                "sidewalk")
RESTRICTED_WORDS = ("vault", "pharmacy", "armory", "datacenter", "cellar", "rooftop", "warehouse", "lab",
                    "archive", "substation")
DISTRACTORS = ("quiet", "bright", "dark", "morning", "evening", "night", "north", "south", "east", "west", "clip",
               "frame", "sensor", "battery", "low", "signal", "update", "motion", "event", "check", "today",
               "again", "blurry", "sharp", "wide", "zoom", "one", "two", "three", "four", "five", "six", "seven",
               "eight", "nine", "ten", "maybe", "please", "logged", "noted")
# Each template has one {kw} slot and some {d} slots; punctuation stays inside the 16-token budget.
TEMPLATES = (
    "camera {d} in the {kw} reports {d} {d}",
    "{kw} feed : {d} {d} {d}",
    "motion near the {kw} , {d} {d}",
    "check {kw} camera {d} {d} {d} please",
    "{d} {d} clip from the {kw}",
    "the {kw} sensor saw {d} {d} {d}",
    "{d} event at {kw} , {d} {d} {d}",
    "review {d} {kw} frame {d}",
    "{kw}",
    "{d} {d} {d} {kw} {d} {d} {d} {d}",
)
# Fixed zip metadata so the npz bytes depend only on the arrays (np.savez stamps the current time).
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_LEVEL = 6


def vocabulary() -> list[str]:
    """Every token the templates can produce, as pipeline.data.tokenize splits them, after <pad> and <unk>."""
    words = set(PUBLIC_WORDS) | set(RESTRICTED_WORDS) | set(DISTRACTORS)
    for template in TEMPLATES:
        words |= {w for w in template.replace("{kw}", " ").replace("{d}", " ").split()}
    return ["<pad>", "<unk>", *sorted(words)]


def make_text(rng: np.random.Generator, text_bits: np.ndarray) -> np.ndarray:
    """Zone bits -> one operator note per sample (numpy unicode array)."""
    notes = []
    for bit in text_bits:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        keywords = RESTRICTED_WORDS if bit else PUBLIC_WORDS
        text = template.replace("{kw}", keywords[rng.integers(len(keywords))])
        while "{d}" in text:
            text = text.replace("{d}", DISTRACTORS[rng.integers(len(DISTRACTORS))], 1)
        notes.append(text)
    return np.array(notes, dtype=np.str_)


def _background(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Textured backgrounds: a random base colour plus two random colour gratings, float [n, H, W, 3] 0..255."""
    base = rng.uniform(40, 215, size=(n, 1, 1, 3))
    img = np.repeat(base, IMAGE_SIZE, 1).repeat(IMAGE_SIZE, 2)
    for _ in range(2):
        freq = rng.uniform(0.05, 0.35, size=(n, 1, 1))  # slow shading, not stripes that mimic shapes
        angle = rng.uniform(0, np.pi, size=(n, 1, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        tint = rng.uniform(-25, 25, size=(n, 1, 1, 3))
        img = img + wave[..., None] * tint
    return img


def make_images(rng: np.random.Generator, image_bits: np.ndarray) -> np.ndarray:
    """Person bits (1 = tall blob/person, 0 = wide blob/vehicle) -> uint8 images [n, 24, 24, 3] HWC."""
    n = len(image_bits)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    img = _background(rng, n, yy, xx)
    short = rng.uniform(1.8, 3.2, size=n)
    long = short * rng.uniform(2.0, 3.0, size=n)
    # Semi-axes along x and y: a person is tall, a vehicle is wide.
    ax = np.where(image_bits == 1, short, long)[:, None, None]
    ay = np.where(image_bits == 1, long, short)[:, None, None]
    reach = np.maximum(ax, ay)[:, 0, 0] + 1
    cx = rng.uniform(reach, IMAGE_SIZE - 1 - reach)[:, None, None]
    cy = rng.uniform(reach, IMAGE_SIZE - 1 - reach)[:, None, None]
    theta = rng.uniform(-np.pi / 9, np.pi / 9, size=(n, 1, 1))  # a slight tilt, never enough to swap classes
    # Superellipse exponent 2..6: from an ellipse to a rounded box, so the outline alone is no cue.
    power = rng.uniform(2.0, 6.0, size=(n, 1, 1))
    dx, dy = xx - cx, yy - cy
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / ax
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / ay
    dist = ((np.abs(u) ** power + np.abs(v) ** power) ** (1 / power) - 1) * np.minimum(ax, ay)
    alpha = np.clip(0.5 - dist, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge
    # The shape colour differs from the mean background by a random contrast in a random colour direction.
    direction = rng.normal(size=(n, 1, 1, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    contrast = rng.uniform(45, 120, size=(n, 1, 1, 1))
    colour = np.clip(img.mean(axis=(1, 2), keepdims=True) + direction * contrast, 0, 255)
    img = img * (1 - alpha) + colour * alpha
    img = img + rng.normal(size=img.shape) * rng.uniform(3, 16, size=(n, 1, 1, 1))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_audio(rng: np.random.Generator, audio_bits: np.ndarray) -> np.ndarray:
    """Band bits (1 = high band/glass or siren, 0 = low band/hum) -> int16 waveforms [n, 512] at 4000 Hz."""
    n = len(audio_bits)
    t = np.arange(NUM_SAMPLES) / SAMPLE_RATE_HZ
    low = rng.uniform(*LOW_BAND_HZ, size=n)
    high = rng.uniform(*HIGH_BAND_HZ, size=n)
    main_f = np.where(audio_bits == 1, high, low)
    other_f = np.where(audio_bits == 1, low, high)
    amp = rng.uniform(0.05, 0.5, size=n)
    # A weaker tone from the other band: the model must compare band energies, not detect presence.
    other_amp = amp * rng.uniform(0.0, 0.6, size=n)
    wave = amp[:, None] * np.sin(2 * np.pi * main_f[:, None] * t + rng.uniform(0, 2 * np.pi, size=(n, 1)))
    wave += other_amp[:, None] * np.sin(2 * np.pi * other_f[:, None] * t + rng.uniform(0, 2 * np.pi, size=(n, 1)))
    snr_db = rng.uniform(*SNR_DB, size=n)
    noise_std = amp / np.sqrt(2) / 10 ** (snr_db / 20)
    wave += rng.normal(size=wave.shape) * noise_std[:, None]
    return np.clip(np.rint(wave * 32767 / ADC_STEP) * ADC_STEP, -32768, 32767).astype(np.int16)


def latent_bits(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Independent fair bits per modality; the label is a function of all three."""
    bits = {k: rng.integers(0, 2, size=n, dtype=np.int64) for k in ("text_bit", "image_bit", "audio_bit")}
    bits["label"] = label_rule(bits["text_bit"], bits["image_bit"], bits["audio_bit"])
    return bits


def label_rule(text_bit: np.ndarray, image_bit: np.ndarray, audio_bit: np.ndarray) -> np.ndarray:
    """Class index = alert level = number of suspicious cues (person seen, restricted zone, high-pitched sound)."""
    return (text_bit + image_bit + audio_bit).astype(np.int64)


def generate_split(seed: int, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(seed, split) -> (raw npz fields, latent bits); each split has its own stream so counts change independently."""
    index = list(SPLIT_COUNTS).index(split)
    rng = np.random.default_rng([seed, index])
    bits = latent_bits(rng, SPLIT_COUNTS[split])
    fields = {
        "image": make_images(rng, bits["image_bit"]),
        "text": make_text(rng, bits["text_bit"]),
        "audio": make_audio(rng, bits["audio_bit"]),
        "label": bits["label"],
    }
    return fields, bits


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Arrays -> an npz whose bytes depend only on the arrays (fixed zip date, mode, order and level)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, whatever the host, so the header bytes match everywhere
            zf.writestr(info, buf.getvalue(), compresslevel=ZIP_LEVEL)
    os.replace(tmp, path)


def image_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of images scaled to 0..1 (the IOSpec's normalisation constants)."""
    x = images.astype(np.float64) / 255.0
    return [round(float(m), 4) for m in x.mean(axis=(0, 1, 2))], [round(float(s), 4) for s in x.std(axis=(0, 1, 2))]


def metadata(seed: int, mean: list[float], std: list[float]) -> dict:
    """dataset.json content: provenance, splits, fields, classes, licence."""
    return {
        "name": "tiny_mm",
        "description": "Synthetic smart-camera events (image + operator note + audio) for the tiny multimodal "
                       "reference model; the label is the alert level = number of suspicious cues over the "
                       "three modalities.",
        "generator": "tools/make_dataset.py",
        "seed": seed,
        "splits": dict(SPLIT_COUNTS),
        "fields": {
            "image": "uint8 [N, 24, 24, 3] HWC RGB; a tall blob (person, cue) or a wide blob (vehicle) of random "
                     "size, tilt, outline, position and colour on a noisy shaded background",
            "text": f"unicode [N]; operator note of <= 12 words naming a restricted zone (cue: "
                    f"{', '.join(RESTRICTED_WORDS)}) or a public one ({', '.join(PUBLIC_WORDS)}) among "
                    "distractor words",
            "audio": f"int16 [N, {NUM_SAMPLES}] mono at {SAMPLE_RATE_HZ} Hz, 12-bit ADC steps of {ADC_STEP}; main "
                     f"tone {HIGH_BAND_HZ[0]}-{HIGH_BAND_HZ[1]} Hz (glass break / siren, cue) or "
                     f"{LOW_BAND_HZ[0]}-{LOW_BAND_HZ[1]} Hz (hum), a weaker tone from the other band, white noise "
                     f"at SNR {SNR_DB[0]}..{SNR_DB[1]} dB",
            "label": "int64 [N]; index into labels.txt",
        },
        "label_rule": "label = person(image) + restricted(text) + high_pitch(audio), i.e. the number of cues",
        "classes": list(CLASS_NAMES),
        "image_mean": mean,
        "image_std": std,
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "licence": "CC0-1.0 (generated data, no third-party content)",
    }


def generate(out: Path, seed: int = SEED) -> dict[str, int]:
    """Write the whole dataset directory; returns the npz sizes in bytes. Raises if one exceeds the size cap."""
    out.mkdir(parents=True, exist_ok=True)
    sizes, mean, std = {}, None, None
    for split in SPLIT_COUNTS:
        fields, _ = generate_split(seed, split)
        if split == "train":
            mean, std = image_stats(fields["image"])
        path = out / f"{split}.npz"
        write_npz(path, fields)
        sizes[split] = path.stat().st_size
        if sizes[split] > MAX_NPZ_BYTES:
            raise SystemExit(f"{path} is {sizes[split]} bytes (> {MAX_NPZ_BYTES}); lower SPLIT_COUNTS['{split}']")
    (out / "vocab.txt").write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    (out / "labels.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    meta = metadata(seed, mean, std)
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=SEED, help="generator seed (the committed data uses the default)")
    args = parser.parse_args(argv)
    sizes = generate(args.out, args.seed)
    for split, size in sizes.items():
        print(f"{args.out / (split + '.npz')}: {SPLIT_COUNTS[split]} samples, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
