"""Per-component model views: a factory's `components(params, module)` -> named parts (encoders, fusion head) with
their IOSpecs and wiring; `run_chain` runs such parts in order through any runtime (numpy in, numpy out).

A smart camera runs a multimodal model as parts on different schedules (image encoder per frame, text encoder when
the prompts change, audio encoder per audio window, fusion head per decision). A factory that supports this has an
optional fourth method next to iospec/construct/create:

    components(params: dict, module: torch.nn.Module) -> dict[str, Component]   # ordered: run in this order

Each Component's `feeds_from` maps every one of its inputs to `"input:<model input name>"` (a model input, with the
model's name and preprocessing) or `"output:<component>.<output name>"` (an earlier component's output). This module
does not import torch, so the bundle and verify code can use the wiring without it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InputSpecError, ModelFactoryError, StageError
from ..iospec import IOSpec, TensorSpec

INPUT_PREFIX = "input:"
OUTPUT_PREFIX = "output:"


@dataclass(frozen=True)
class Component:
    """One exportable part of a model.

    module:     a torch.nn.Module sharing the fused model's trained weights (a view, not a copy); its forward takes
                the IOSpec inputs positionally and returns one tensor per IOSpec output, like a whole model.
    iospec:     its named inputs and outputs.
    feeds_from: component input name -> "input:<model input>" or "output:<component>.<output>".
    dataset:    for a side component only: its data sub-directory (see `side`); feeds_from is then empty.
    quantization: per format ("onnx" | "openvino" | "tflite") settings the model needs for this part whatever the
                target (e.g. a transformer text encoder: NNCF model_type transformer; FFN down-projections float),
                applied over the target profile's `quantization` (keep_float entries are added) and written to
                the manifest.
    """

    module: Any
    iospec: IOSpec
    feeds_from: dict[str, str]
    dataset: str | None = None
    quantization: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def side(self) -> bool:
        """A side component (e.g. a text encoder run when prompts change) is not on the chain from the model's
        inputs to its outputs: it has its own data (`dataset`: a sub-directory of the model's dataset holding
        calibration.npz and eval.npz for its IOSpec inputs) and no feeds."""
        return self.dataset is not None


def embedding_spec(name: str, dim: int) -> TensorSpec:
    """An encoder's output / fusion head's input: one float32 embedding row per sample."""
    return TensorSpec(name=name, shape=(1, dim), dtype="float32", layout="NC")


def parse_feed(ref: str) -> tuple[str, str | None, str]:
    """"input:tokens" -> ("input", None, "tokens"); "output:text_encoder.text_embedding" ->
    ("output", "text_encoder", "text_embedding"). Anything else -> ModelFactoryError."""
    if ref.startswith(INPUT_PREFIX) and len(ref) > len(INPUT_PREFIX):
        return "input", None, ref[len(INPUT_PREFIX):]
    if ref.startswith(OUTPUT_PREFIX):
        component, dot, output = ref[len(OUTPUT_PREFIX):].partition(".")
        if component and dot and output:
            return "output", component, output
    raise ModelFactoryError(f"component feed '{ref}' is neither 'input:<name>' nor 'output:<component>.<output>'")


def chain_of(components: Mapping[str, Component]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Components -> (run order, feeds_from per component) of the chained (non-side) components: the two
    framework-free arguments of run_chain."""
    chained = {name: c for name, c in components.items() if not c.side}
    return list(chained), {name: dict(c.feeds_from) for name, c in chained.items()}


def check_components(components: Mapping[str, Component], model_iospec: IOSpec) -> None:
    """Raise ModelFactoryError unless every component input is fed, from a model input or an earlier component's
    declared output, with the same shape and dtype on both ends."""
    model_inputs = {s.name: s for s in model_iospec.inputs}
    seen: dict[str, dict[str, TensorSpec]] = {}
    if all(c.side for c in components.values()):
        raise ModelFactoryError("every component is a side component; at least one must be on the model's chain")
    for name, comp in components.items():
        if comp.side:
            if comp.feeds_from or not comp.dataset or "/" in comp.dataset.strip("/") or ".." in comp.dataset:
                raise ModelFactoryError(f"side component '{name}' needs empty feeds_from and a dataset "
                                        f"sub-directory name, got {comp.feeds_from} / '{comp.dataset}'")
            continue
        wanted = {s.name: s for s in comp.iospec.inputs}
        if set(comp.feeds_from) != set(wanted):
            raise ModelFactoryError(f"component '{name}': feeds_from covers {sorted(comp.feeds_from)}, "
                                    f"its inputs are {sorted(wanted)}")
        for input_name, ref in comp.feeds_from.items():
            kind, source, tensor = parse_feed(ref)
            pool = model_inputs if kind == "input" else seen.get(source)
            if pool is None or tensor not in pool:
                raise ModelFactoryError(f"component '{name}' input '{input_name}' is fed from '{ref}', "
                                        "which is no model input nor an output of an earlier component")
            src, dst = pool[tensor], wanted[input_name]
            if (src.shape, src.dtype) != (dst.shape, dst.dtype):
                raise ModelFactoryError(f"component '{name}' input '{input_name}' is {dst.dtype}{list(dst.shape)}, "
                                        f"'{ref}' is {src.dtype}{list(src.shape)}")
        seen[name] = {s.name: s for s in comp.iospec.outputs}


def run_chain(components_order: list[str], feeds_from: Mapping[str, Mapping[str, str]],
              run_fn: Callable[[str, dict[str, Any]], Mapping[str, Any]],
              sample: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Run components in order: each gets its feeds from `sample` (model inputs) or earlier outputs.

    run_fn(component_name, feeds) -> {output name: array} runs one component with any runtime (torch, onnxruntime,
    a TFLite interpreter ...). Returns {component: {output name: array}} in run order.
    """
    results: dict[str, dict[str, Any]] = {}
    for name in components_order:
        feeds = {}
        for input_name, ref in feeds_from[name].items():
            kind, source, tensor = parse_feed(ref)
            if kind == "input":
                if tensor not in sample:
                    raise InputSpecError(f"component '{name}' needs model input '{tensor}', the sample has "
                                         f"{sorted(sample)}")
                feeds[input_name] = sample[tensor]
            elif source not in results:
                raise ModelFactoryError(f"component '{name}' is fed from '{ref}', which has not run before it")
            elif tensor not in results[source]:
                raise StageError(f"component '{source}' produced {sorted(results[source])}, not '{tensor}' "
                                 f"(needed by '{name}')")
            else:
                feeds[input_name] = results[source][tensor]
        results[name] = dict(run_fn(name, feeds))
    return results
