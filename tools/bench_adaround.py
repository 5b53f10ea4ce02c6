"""AdaRound objectives side by side on one fp32 ONNX graph: each roundable layer rounded with the sampled objective
(the default) and the exact one, one thread, both results scored over every input with the exact form.

    python tools/bench_adaround.py --onnx <cache>/export_onnx/<key>/model.onnx [--samples 32] [--iterations 200]

(The smart camera's image encoder: the export_onnx entry whose artifact.json says "component": "image_encoder".)
Inputs are standard-normal draws in the graph's input shapes (batch 1), seed 0. Prints one line per layer and the
totals; nothing is written.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()

    import onnx
    import torch
    from onnx import numpy_helper

    from pipeline.export.rounding import Quadratic, adaround, adaround_exact, layer_inputs, rounding_layers

    torch.set_num_threads(1)
    model = onnx.load(str(args.onnx))
    layers = rounding_layers(model, set(), None)
    inits = {i.name: i for i in model.graph.initializer}
    rng = np.random.default_rng(0)
    shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in model.graph.input
              if i.name not in inits}
    samples = [{n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
               for _ in range(args.samples)]
    totals = {"exact": 0.0, "sampled": 0.0}
    ratios = {"exact": [], "sampled": []}
    print(f"{'layer':<48} {'exact s':>8} {'sampled s':>9} {'exact ratio':>11} {'sampled ratio':>13}")
    for chunk, arrays in layer_inputs(str(args.onnx), layers, samples):
        for layer in chunk:
            index = layers.index(layer)
            w = numpy_helper.to_array(inits[layer["weight"]]).astype(np.float32)
            x = arrays[layer["input"]]
            start = time.perf_counter()
            quad = Quadratic(layer, w.shape, x)
            exact, nearest_mse, exact_mse = adaround_exact(layer, w, quad, args.iterations)
            t_exact = time.perf_counter() - start
            start = time.perf_counter()
            sampled = adaround(layer, w, x, args.iterations, 8, 56, index)[0]
            t_sampled = time.perf_counter() - start
            sampled_mse = float(quad.sum_sq(torch.from_numpy(sampled - w))) / quad.count
            totals["exact"] += t_exact
            totals["sampled"] += t_sampled
            r_exact = exact_mse / nearest_mse if nearest_mse else 1.0
            r_sampled = sampled_mse / nearest_mse if nearest_mse else 1.0
            ratios["exact"].append(r_exact)
            ratios["sampled"].append(r_sampled)
            print(f"{layer['name'][-48:]:<48} {t_exact:8.2f} {t_sampled:9.2f} {r_exact:11.3f} {r_sampled:13.3f}")
    print(f"{len(layers)} layers: exact {totals['exact']:.1f} s, sampled {totals['sampled']:.1f} s; median output-error "
          f"ratio to round-to-nearest (all inputs): exact {np.median(ratios['exact']):.3f}, "
          f"sampled {np.median(ratios['sampled']):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
