"""The `compress` stage: torch artifact + the release's compression recipe -> a compressed torch artifact.

Low-rank and structured steps change the architecture, so the artifact records the structure it applied, in
order: [layer, rank] per factorization, ["@shapes", {tensor: shape}] per structured step. `replay_structure`
rebuilds it on a freshly constructed model before its state dict is loaded (`pipeline.torchmodel.load_torch` does
this for every compressed artifact). A distill step trains the compressed model against the uncompressed one (the
stage's input), so every export inherits the recovered weights."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..artifact import Artifact
from ..stages import Stage, StageContext


@dataclass
class RecipeData:
    """What the steps may use: example inputs (tracing, MACs), the calibration pool (Taylor importance,
    distillation), the teacher (the uncompressed model) and the eval inputs (distillation's before/after agreement).
    The config dry run has only the example: distill steps are skipped there."""

    example: tuple
    input_order: list[str]
    modalities: dict[str, str]
    pool: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    eval_inputs: dict[str, np.ndarray] | None = None
    teacher: object = None
    progress: object = None
    seed: int = 0

    def batches(self, n: int = 64, batch: int = 16) -> list[tuple] | None:
        """What it does: the first n pool samples -> batches of torch inputs; None in the config dry run."""
        return None if self.pool is None else self.taylor_batches(n, batch)

    def taylor_batches(self, n: int = 64, batch: int = 16) -> list[tuple]:
        """What it does: the first n pool samples (or the example alone) -> batches of torch inputs."""
        import torch

        if self.pool is None:
            return [self.example]
        size = min(n, len(next(iter(self.pool.values()))))
        return [tuple(torch.from_numpy(np.ascontiguousarray(self.pool[k][i:i + batch])) for k in self.input_order)
                for i in range(0, size, batch)]


def example_from_iospec(iospec, batch: int = 2) -> tuple:
    """What it does: an IOSpec -> seeded dummy inputs (float: normal noise; integer: ones) with its shapes."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for s in iospec.inputs:
        shape = (batch, *s.shape[1:])
        out.append(torch.randn(shape, generator=g) if s.dtype.startswith("float")
                   else torch.ones(shape, dtype=getattr(torch, s.dtype)))
    return tuple(out)


def recipe_data(iospec, dataset=None, teacher=None, progress=None, seed: int = 0, pool_splits=()) -> RecipeData:
    """What it does: an IOSpec (+ dataset, teacher) -> RecipeData; without a dataset, dummy example inputs."""
    import torch

    order = list(iospec.input_names)
    modalities = {s.name: s.modality for s in iospec.inputs}
    if dataset is None:
        return RecipeData(example_from_iospec(iospec), order, modalities, seed=seed)
    parts = [dataset.split(name) for name in (pool_splits or ("calibration",))]
    pool = {k: np.concatenate([p.inputs[k] for p in parts]) for k in order}
    labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
    example = tuple(torch.from_numpy(np.ascontiguousarray(pool[k][:2])) for k in order)
    return RecipeData(example, order, modalities, pool, labels, dataset.split("eval").inputs, teacher, progress, seed)


def run_recipe(module, steps, data: RecipeData) -> tuple[list[dict], list[list]]:
    """What it does: a torch module + CompressionSteps + RecipeData -> the module compressed in place; per step its
    report, and the structure to replay (see the module docstring)."""
    from .lowrank import apply_lowrank
    from .prune import magnitude_prune

    applied, structure = [], []
    for i, step in enumerate(steps):
        if step.method == "lowrank":
            report = apply_lowrank(module, energy=step.energy, rank=step.rank, param_ratio=step.param_ratio,
                                   layers=step.layers, skip=step.skip, min_cosine=step.min_cosine,
                                   batches=data.batches(step.samples), progress=data.progress)
            structure += [[row["name"], row["rank"]] for row in report if row["rank"] is not None]
        elif step.method == "prune":
            report = magnitude_prune(module, step.sparsity, scope=step.scope, layers=step.layers, skip=step.skip)
        elif step.method == "structured":
            from .structured import shapes_changed, shapes_of, structured_prune

            before = shapes_of(module)
            report = structured_prune(module, data.example, ratio=step.ratio or 0.0, scope=step.scope,
                                      importance=step.importance, floor=step.floor, ratios=step.ratios,
                                      heads=step.heads, layers=step.layers, skip=step.skip, round_to=step.round_to,
                                      data=data.taylor_batches(step.samples) if step.importance == "taylor" else None)
            structure.append(["@shapes", shapes_changed(before, module)])
        else:
            if data.teacher is None:  # the config dry run: settings were checked by the config model
                applied.append({"step": i, "method": step.method, "settings": step.model_dump(exclude_none=True),
                                "layers": [], "note": "dry run"})
                continue
            report = _distill(module, step, data)
        applied.append({"step": i, "method": step.method, "label": step.label(),
                        "settings": step.model_dump(exclude_none=True, mode="json"), "layers": report})
    return applied, structure


def _distill(module, step, data: RecipeData) -> dict:
    from .distill import distill

    return distill(module, data.teacher, data.pool, data.input_order, data.modalities, data.labels,
                   steps=step.steps, batch_size=step.batch_size, lr=step.lr, temperature=step.temperature,
                   label_weight=step.label_weight, augment=step.augment, seed=data.seed, progress=data.progress,
                   eval_inputs=data.eval_inputs)


def changed_children(before: dict, after: dict) -> set[str]:
    """What it does: state dicts before/after a recipe -> the top-level child names whose tensors changed (in shape,
    value, or which keys exist: a factorized layer renames its weights)."""
    import torch

    changed = {k.split(".", 1)[0] for k in set(before) ^ set(after)}
    for k in set(before) & set(after):
        if before[k].shape != after[k].shape or not torch.equal(before[k], after[k]):
            changed.add(k.split(".", 1)[0])
    return changed


class Compress(Stage):
    name = "compress"
    version = 3  # 3: transformer residual width pruned with its LayerNorms
    consumes = ("torch",)
    produces = "torch"
    requires = ("torch",)
    extra = "torch"

    def config(self, ctx: StageContext) -> dict:
        cfg = {"recipe": [s.model_dump(mode="json") for s in ctx.release.compression], "seed": ctx.release.seed}
        if any(s.method == "distill" or s.importance == "taylor" or s.min_cosine is not None
               for s in ctx.release.compression):
            splits = sorted({p for s in ctx.release.compression for p in s.pool} | {"calibration", "eval"})
            cfg["data"] = {s: ctx.dataset.split_fingerprint(s) for s in splits}
        return cfg

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        import torch

        from ..torchmodel import import_factory, load_torch
        from .structured import count_macs

        factory = import_factory(ctx.release.model.factory)
        module = load_torch(artifact, factory, ctx.release.model.params)
        teacher = load_torch(artifact, factory, ctx.release.model.params) \
            if any(s.method == "distill" for s in ctx.release.compression) else None
        pool = next((s.pool for s in ctx.release.compression if s.method == "distill"), ["calibration"])
        data = recipe_data(ctx.iospec, ctx.dataset, teacher, ctx.progress, ctx.release.seed, tuple(pool))
        before = sum(p.numel() for p in module.parameters())
        macs_before = count_macs(module, tuple(t[:1] for t in data.example))
        hook = getattr(factory, "after_compress", None)
        # only a factory with the hook needs to know which towers changed (a copy of every weight otherwise)
        snapshot = {k: v.detach().clone() for k, v in module.state_dict().items()} if callable(hook) else None
        threads = torch.get_num_threads()
        torch.set_num_threads(min(threads, 2))
        try:
            applied, structure = run_recipe(module, ctx.release.compression, data)
        finally:
            torch.set_num_threads(threads)
        module.eval()
        changed = changed_children(snapshot, module.state_dict()) if snapshot is not None else set()
        if changed:  # e.g. tables a compressed sub-model computed at create() must follow it
            from ..models import FactoryContext

            hook(ctx.release.model.params, module, sorted(changed),
                 FactoryContext(dataset=ctx.dataset, seed=ctx.release.seed, progress=ctx.progress))
        after = sum(p.numel() for p in module.parameters())
        zeros = sum(int((p == 0).sum()) for p in module.parameters())
        macs = count_macs(module, tuple(t[:1] for t in data.example))
        torch.save(module.state_dict(), ctx.workdir / "model.pt")
        (ctx.workdir / "iospec.json").write_text(ctx.iospec.model_dump_json(indent=1))
        summary = {"parameters_before": int(before), "parameters": int(after), "zero_parameters": zeros,
                   "macs_before": macs_before, "macs": macs, "steps": applied}
        (ctx.workdir / "compression.json").write_text(json.dumps(summary, indent=1, sort_keys=True, default=float))
        return ctx.artifact("torch", meta={"parameters": int(after), "compression": summary,
                                           "structure": structure}, main_file="model.pt")
