"""Where EfficientNet-Lite0's int8 error comes from: simulated int8 in torch, one part of the network at a time.

    python tools/error_budget.py [--samples 256] [--out BENCHMARKS.md]

The pretrained EfficientNet-Lite0 of the default release, BatchNorm folded into its convolutions (as every exporter
does), runs on the 111 held-out photos in fp32 and with int8 simulated on the grids the three toolchains use:
weights symmetric per output channel (step max|w|/127, round to nearest), activations asymmetric uint8 per tensor
from min/max over calibration views (block outputs, every conv's output after its ReLU6, the image and the pooled
features). Each row quantizes one set of parts and reports the logit RMS error against fp32 and the ImageNet top-1
agreement; the header gives the gaps between fp32's two best logits, which the error has to stay under for the
top-1 class not to flip. The toolchains' own results (BENCHMARKS.md, bench_real) add their activation placement,
bias correction and AdaRound on top of this.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MARK = "<!-- error_budget -->"


def fold_batchnorm(model) -> None:
    """Every ConvBNAct: the BatchNorm's scale and shift go into the convolution (weights and a new bias)."""
    import torch

    from pipeline.models.effnet_lite0 import ConvBNAct

    for mod in model.modules():
        if isinstance(mod, ConvBNAct):
            bn = mod.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            mod.conv.weight.data = (mod.conv.weight * scale[:, None, None, None]).detach()
            mod.conv.bias = torch.nn.Parameter((bn.bias - bn.running_mean * scale).detach())
            mod.bn = torch.nn.Identity()


class ActivationGrid:
    """Per-tensor uint8 min/max quantization of chosen module outputs (and two module inputs), switchable."""

    def __init__(self, model):
        from pipeline.models.effnet_lite0 import ConvBNAct, MBConv

        self.ranges: dict[str, tuple[float, float]] = {}
        self.collect = self.apply = False
        for name, mod in model.named_modules():
            if isinstance(mod, (ConvBNAct, MBConv)):
                mod.register_forward_hook(lambda m, i, out, name=name: self._see(name, out))
        model.stem.register_forward_pre_hook(lambda m, args: (self._see("image", args[0]),))
        model.classifier.register_forward_pre_hook(lambda m, args: (self._see("pooled", args[0]),))

    def _see(self, name: str, x):
        import torch

        if self.collect:
            lo, hi = self.ranges.get(name, (0.0, 0.0))  # the range always holds zero (exact zero point)
            self.ranges[name] = (min(lo, x.min().item()), max(hi, x.max().item()))
        if not self.apply:
            return x
        lo, hi = self.ranges[name]
        step = (hi - lo) / 255 or 1.0
        zero = round(-lo / step)
        return (torch.clamp(torch.round(x / step) + zero, 0, 255) - zero) * step


def quantize_weights(model, originals: dict, which) -> None:
    """Weights named by `which(name)` -> symmetric per-output-channel int8 (round to nearest); others restored."""
    import torch

    for name, param in model.named_parameters():
        w = originals[name]
        if not (name.endswith("weight") and which(name)):
            param.data = w.clone()
            continue
        shape = (-1,) + (1,) * (w.dim() - 1)
        step = (w.abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12) / 127).reshape(shape)
        param.data = torch.clamp(torch.round(w / step), -127, 127) * step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=256, help="calibration views for the activation ranges")
    ap.add_argument("--out", type=Path, default=None, help="also write the table into this markdown file")
    args = ap.parse_args()
    import torch

    from pipeline.data import Dataset
    from pipeline.models.effnet_lite0 import load_efficientnet_lite0
    from pipeline.models.smartcam import SmartCam

    start = time.time()
    torch.set_num_threads(2)
    data = Dataset(REPO / "calibration_data" / "smartcam", SmartCam().iospec({}))
    calib = data.split("calibration").inputs["image"]
    calib = torch.from_numpy(calib[np.sort(np.random.default_rng(0).choice(len(calib), args.samples, replace=False))])
    photos = torch.from_numpy(data.split("eval").inputs["image"])
    model = load_efficientnet_lite0()
    fold_batchnorm(model)
    model.eval()
    originals = {n: p.data.clone() for n, p in model.named_parameters()}
    grid = ActivationGrid(model)

    def logits(images):
        with torch.no_grad():
            return torch.cat([model(images[i:i + 16]) for i in range(0, len(images), 16)])

    ref = logits(photos)
    top2 = torch.topk(ref, 2, dim=1).values
    gaps = (top2[:, 0] - top2[:, 1]).numpy()
    grid.collect = True
    logits(calib)
    grid.collect = False
    parts = ("stem", "expand", "depthwise", "project", "head", "classifier")
    rows = [("weights: all", lambda n: True, False)]
    rows += [(f"weights: {p} only", lambda n, p=p: n.startswith(p) or f".{p}." in n, False) for p in parts]
    rows += [("activations only", lambda n: False, True), ("weights and activations", lambda n: True, True),
             ("both, depthwise weights float", lambda n: ".depthwise." not in n, True),
             ("both, depthwise + project weights float",
              lambda n: ".depthwise." not in n and ".project." not in n, True)]
    table = []
    for label, which, acts in rows:
        quantize_weights(model, originals, which)
        grid.apply = acts
        out = logits(photos)
        rms = float(((out - ref) ** 2).mean().sqrt())
        agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
        table.append(f"| {label} | {rms:.4f} | {agree:.1%} |")
        print(table[-1], flush=True)
    q = np.quantile(gaps, [0.05, 0.1, 0.25, 0.5])
    lines = [MARK, "## int8 error budget of EfficientNet-Lite0 (simulated)", "",
             f"`python tools/error_budget.py --out BENCHMARKS.md` on {time.strftime('%Y-%m-%d')}, "
             f"{time.time() - start:.0f} s: int8 simulated in torch on the toolchains' grids, round to nearest, "
             f"no bias correction (see the script's docstring); {len(photos)} held-out photos, activation ranges from "
             f"{args.samples} calibration views. fp32's gap between its two best logits: 5 % of the photos under "
             f"{q[0]:.2f}, 10 % under {q[1]:.2f}, 25 % under {q[2]:.2f}, median {q[3]:.2f}. A photo flips when the "
             "int8 error between those two logits exceeds its gap.", "",
             "| int8 on | logit RMS error vs fp32 | top-1 agreement |", "|---|---|---|", *table, MARK]
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else ""
        if MARK in text:
            head, _, rest = text.partition(MARK)
            _, _, tail = rest.partition(MARK)
            text = head + "\n".join(lines) + tail
        else:
            text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
        args.out.write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
