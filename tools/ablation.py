"""Modality ablation for the tiny multimodal model: factory + calibration_data/tiny_mm -> a markdown table of eval
accuracy with all inputs and with each modality's input swapped for other eval samples' input.

Swapping (not zeroing) keeps every input in-distribution, so a drop measures what the model takes from that
modality, not how it reacts to an impossible input. Usage (from the repo root):

    python tools/ablation.py [--seed 0] [--params '{"fusion": "attention"}']
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script from a checkout, no install needed

SHUFFLE_SEED = 1234


def derangement(n: int, seed: int) -> np.ndarray:
    """Index map where every sample takes another sample's input (a random cycle, so no fixed points)."""
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[perm] = np.roll(perm, 1)
    return out


def accuracy(model, inputs: dict[str, np.ndarray], names: list[str], labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logits = model(*(torch.from_numpy(inputs[n]) for n in names))
    return float((logits.argmax(dim=1).numpy() == labels).mean())


def ablate(model, iospec, split, seed: int = SHUFFLE_SEED) -> list[tuple[str, str, float]]:
    """(modality, input name, accuracy) rows: the full model first, then one row per ablated input."""
    names = iospec.input_names
    rows = [("none (all inputs)", "-", accuracy(model, split.inputs, names, split.labels))]
    swap = derangement(len(split), seed)
    for spec in iospec.inputs:
        swapped = dict(split.inputs)
        swapped[spec.name] = split.inputs[spec.name][swap]
        rows.append((spec.modality, spec.name, accuracy(model, swapped, names, split.labels)))
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.data import open_dataset
    from pipeline.models import FactoryContext
    from pipeline.models.tiny import TinyMultimodal
    from pipeline.progress import Progress

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=REPO / "calibration_data" / "tiny_mm")
    parser.add_argument("--seed", type=int, default=0, help="training seed (FactoryContext.seed)")
    parser.add_argument("--params", default="{}", help="factory params as JSON, e.g. '{\"fusion\": \"attention\"}'")
    args = parser.parse_args(argv)
    params = json.loads(args.params)

    factory = TinyMultimodal()
    iospec = factory.iospec(params)
    dataset = open_dataset(args.dataset, iospec)
    ctx = FactoryContext(dataset=dataset, seed=args.seed, progress=Progress())
    start = time.perf_counter()
    model = factory.create(params, ctx)
    train_s = time.perf_counter() - start
    split = dataset.split("eval")
    print(f"params={json.dumps(params, sort_keys=True)} seed={args.seed} train_s={train_s:.1f} "
          f"eval samples={len(split)} shuffle_seed={SHUFFLE_SEED}")
    print("| ablated modality | input replaced | eval accuracy |")
    print("|---|---|---|")
    for modality, name, acc in ablate(model, iospec, split):
        print(f"| {modality} | {name} | {100 * acc:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
