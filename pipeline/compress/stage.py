"""The `compress` stage: torch artifact + the release's compression recipe -> a compressed torch artifact.

Low-rank steps change the architecture, so the artifact records the structure it applied (layer -> rank, in order);
`replay_structure` rebuilds that structure on a freshly constructed model before its state dict is loaded
(`pipeline.load.load_torch` does this for every compressed artifact)."""
from __future__ import annotations

import json

from ..artifact import Artifact
from ..stages import Stage, StageContext


def run_recipe(module, steps) -> list[dict]:
    """What it does: a torch module + CompressionSteps -> the module compressed in place; per step its report."""
    from .lowrank import apply_lowrank
    from .prune import magnitude_prune

    applied = []
    for i, step in enumerate(steps):
        if step.method == "lowrank":
            report = apply_lowrank(module, energy=step.energy, rank=step.rank, param_ratio=step.param_ratio,
                                   layers=step.layers, skip=step.skip)
        else:
            report = magnitude_prune(module, step.sparsity, scope=step.scope, layers=step.layers, skip=step.skip)
        applied.append({"step": i, "method": step.method, "settings": step.model_dump(exclude_none=True),
                        "layers": report})
    return applied


def structure_of(applied: list[dict]) -> list[list]:
    """What it does: applied steps -> [[layer name, rank], ...] of every factorization, in the order applied."""
    return [[row["name"], row["rank"]] for step in applied if step["method"] == "lowrank"
            for row in step["layers"] if row["rank"] is not None]


def replay_structure(module, structure: list[list]) -> None:
    """What it does: a freshly constructed module + recorded factorizations -> the same architecture (weights are
    placeholders until the compressed state dict is loaded)."""
    from .lowrank import factorize

    for name, rank in structure:
        modules = dict(module.named_modules())
        pair, _ = factorize(modules[name], int(rank))
        parent, _, attr = name.rpartition(".")
        setattr(modules[parent] if parent else module, attr, pair)


class Compress(Stage):
    name = "compress"
    version = 1
    consumes = ("torch",)
    produces = "torch"
    requires = ("torch",)
    extra = "torch"

    def config(self, ctx: StageContext) -> dict:
        return {"recipe": [s.model_dump(mode="json") for s in ctx.release.compression]}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        import torch

        from ..load import import_factory, load_torch

        factory = import_factory(ctx.release.model.factory)
        module = load_torch(artifact, factory, ctx.release.model.params)
        before = sum(p.numel() for p in module.parameters())
        applied = run_recipe(module, ctx.release.compression)
        after = sum(p.numel() for p in module.parameters())
        zeros = sum(int((p == 0).sum()) for p in module.parameters())
        torch.save(module.state_dict(), ctx.workdir / "model.pt")
        (ctx.workdir / "iospec.json").write_text(ctx.iospec.model_dump_json(indent=1))
        summary = {"parameters_before": int(before), "parameters": int(after), "zero_parameters": zeros,
                   "steps": applied}
        (ctx.workdir / "compression.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        return ctx.artifact("torch", meta={"parameters": int(after), "compression": summary,
                                           "structure": structure_of(applied)}, main_file="model.pt")
