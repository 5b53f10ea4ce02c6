"""Torch model helpers shared by the stages: a model factory ("module:attr") -> factory object; a torch artifact ->
its module (compressed structure replayed); numpy samples <-> torch inputs and outputs.

Used by load.py (load/reference stages), compress/stage.py, export/onnx.py and the runner; it imports none of
them. torch is imported inside the functions only.
"""
from __future__ import annotations

import importlib

import numpy as np

from .artifact import Artifact
from .errors import ModelFactoryError


def import_factory(spec: str):
    """'module:attr' -> factory object (a class is instantiated without arguments)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure of user code is a config problem, shown in one line
        raise ModelFactoryError(
            f"model.factory '{spec}': cannot import module '{module_name}' ({type(err).__name__}: {err})"
        ) from err
    obj = getattr(module, attr, None)
    if obj is None:
        raise ModelFactoryError(f"model.factory '{spec}': module '{module_name}' has no attribute '{attr}'")
    factory = obj() if isinstance(obj, type) else obj
    for method in ("iospec", "construct", "create"):
        if not callable(getattr(factory, method, None)):
            raise ModelFactoryError(f"model.factory '{spec}' has no {method}() method (see pipeline/models)")
    return factory


def load_torch(art: Artifact, factory, params: dict):
    """Rebuild the torch module of a torch artifact (eval mode)."""
    import torch

    module = factory.construct(params)
    if art.meta.get("structure"):  # a compressed artifact: rebuild its factorized layers first
        replay_structure(module, art.meta["structure"])
    state = torch.load(art.path("model.pt"), map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    return module.eval()


def torch_inputs(iospec, sample: dict[str, np.ndarray]):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(sample[name])) for name in iospec.input_names)


def run_torch(module, iospec, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        out = module(*torch_inputs(iospec, sample))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return {name: t.detach().numpy() for name, t in zip(iospec.output_names, outs)}


def replay_structure(module, structure: list[list]) -> None:
    """What it does: a freshly constructed module + recorded structure -> the same architecture (weights are
    placeholders until the compressed state dict is loaded)."""
    from .compress.lowrank import factorize
    from .compress.structured import resize_to

    for name, value in structure:
        if name == "@shapes":
            resize_to(module, value)
            continue
        modules = dict(module.named_modules())
        pair, _ = factorize(modules[name], int(value))
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else module, attr, pair)
