"""Reference models and the model-factory protocol: "module:attr" in the release config -> a torch model.

A factory is a class (instantiated without arguments) or object with three methods:

- `iospec(params: dict) -> IOSpec`                the named inputs/outputs, preprocessing and labels;
- `construct(params: dict) -> torch.nn.Module`    the architecture with untrained weights (used to reload
                                                  a cached state dict);
- `create(params: dict, ctx: FactoryContext) -> torch.nn.Module`
                                                  the ready model (trained or pretrained), in eval mode.

Optionally `components(params, module) -> dict[str, Component]` (see pipeline/models/components.py) splits a
created model into parts a device runs separately (image encoder per frame, text encoder when prompts change,
fusion head), each with its own IOSpec and the wiring between them.

The module's `forward` takes the IOSpec inputs positionally, in IOSpec order, as batch-1 tensors, and returns
one tensor per IOSpec output (a tuple when there are several).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import Dataset
    from ..progress import Progress


@dataclass
class FactoryContext:
    """What a factory may use: the bound dataset (splits by name), a seed, and progress bars."""

    dataset: "Dataset"
    seed: int
    progress: "Progress"
