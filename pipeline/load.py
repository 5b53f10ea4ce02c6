"""Model loading: a model factory ("module:attr") -> torch fp32 artifact, and its reference outputs on eval.

The torch artifact stores a state dict (loaded back with weights_only=True, never a pickle of code) plus the
IOSpec; the architecture is rebuilt by the factory's `construct`.
"""
from __future__ import annotations

import json

import numpy as np

from .artifact import Artifact
from .errors import EdgepipeError, ModelFactoryError
from .stages import Stage, StageContext
from .torchmodel import import_factory, load_torch, run_torch


def param_files(params, base_dir) -> dict[str, str]:
    """What it does: the factory's params -> {"<key path>": sha256} of every string value that names an existing
    regular file (absolute, relative to the release config's folder, or to the working directory), so that a
    checkpoint replaced at the same path changes the load stage's key even when the factory has no fingerprint()."""
    from pathlib import Path

    from .artifact import sha256_file

    found: dict[str, str] = {}

    def walk(value, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif isinstance(value, str) and value and "\x00" not in value and len(value) < 4096:
            for candidate in (Path(value), Path(base_dir or ".") / value):
                try:
                    if candidate.is_file():
                        found[where] = sha256_file(candidate)
                        return
                except OSError:
                    continue

    walk(params or {}, "")
    return found


class LoadModel(Stage):
    name = "load"
    version = 1
    produces = "torch"
    requires = ("torch",)
    extra = "torch"

    def config(self, ctx: StageContext) -> dict:
        """Factory, params, seed, the train split (when the dataset has one) and what the factory says changes its
        model besides params (`fingerprint(params)`, optional: e.g. pretrained-weight package versions)."""
        from .data import split_path

        factory = import_factory(ctx.release.model.factory)
        has_train = split_path(ctx.dataset.root, "train").is_file()
        cfg = {"factory": ctx.release.model.factory, "params": ctx.release.model.params, "seed": ctx.release.seed,
               "train": ctx.dataset.split_fingerprint("train") if has_train else None}
        files = param_files(ctx.release.model.params, ctx.base_dir)
        if files:  # a checkpoint named in params and replaced in place must rebuild the model
            cfg["param_files"] = files
        if callable(getattr(factory, "fingerprint", None)):
            try:
                cfg["factory_fingerprint"] = factory.fingerprint(ctx.release.model.params)
            except Exception as err:
                if isinstance(err, EdgepipeError) and err.exit_code == 2:
                    raise
                raise ModelFactoryError(f"model.factory '{ctx.release.model.factory}' fingerprint() failed: "
                                        f"{type(err).__name__}: {err}") from err
        return cfg

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        import torch

        from .models import FactoryContext

        factory = import_factory(ctx.release.model.factory)
        params = ctx.release.model.params
        try:
            module = factory.create(params, FactoryContext(dataset=ctx.dataset, seed=ctx.release.seed,
                                                           progress=ctx.progress))
        except Exception as err:
            # bad input already said in one line (e.g. the train split's InputSpecError naming its file)
            if isinstance(err, EdgepipeError) and err.exit_code == 2:
                raise
            raise ModelFactoryError(
                f"model.factory '{ctx.release.model.factory}' failed to create the model: {type(err).__name__}: {err}"
            ) from err
        torch.save(module.state_dict(), ctx.workdir / "model.pt")
        if callable(getattr(factory, "assets", None)):  # files a device needs besides the models -> bundle assets/
            (ctx.workdir / "assets").mkdir()
            for name, data in sorted(factory.assets(params, module).items()):
                (ctx.workdir / "assets" / name).write_bytes(data)
        (ctx.workdir / "iospec.json").write_text(ctx.iospec.model_dump_json(indent=1))
        n_params = sum(p.numel() for p in module.parameters())
        return ctx.artifact("torch", meta={"parameters": int(n_params)}, main_file="model.pt")


class ReferenceOutputs(Stage):
    """fp32 torch outputs on the eval split: what every artifact is verified against."""

    name = "reference"
    version = 1
    consumes = ("torch",)
    produces = "reference"
    requires = ("torch",)
    extra = "torch"

    def config(self, ctx: StageContext) -> dict:
        return {"eval": ctx.dataset.split_fingerprint("eval")}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        import torch

        factory = import_factory(ctx.release.model.factory)
        module = load_torch(artifact, factory, ctx.release.model.params)
        split = ctx.dataset.split("eval")
        outputs: dict[str, list[np.ndarray]] = {n: [] for n in ctx.iospec.output_names}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # fixed thread count: reference numbers must not depend on the machine
        try:
            with ctx.progress.task("torch fp32 reference on eval", len(split)) as task:
                for i in range(len(split)):
                    for name, value in run_torch(module, ctx.iospec, split.sample(i)).items():
                        outputs[name].append(value)
                    task.advance()
        finally:
            torch.set_num_threads(threads)
        meta = {"samples": len(split)}
        for name, values in outputs.items():
            np.save(ctx.workdir / f"eval.{name}.npy", np.concatenate(values))
        if split.labels is not None:
            np.save(ctx.workdir / "labels.npy", split.labels)
            first = np.concatenate(outputs[ctx.iospec.output_names[0]])
            known = split.labels >= 0  # -1: unlabelled sample
            if known.any():
                meta["accuracy"] = float((first.argmax(-1)[known] == split.labels[known]).mean())
        (ctx.workdir / "reference.json").write_text(json.dumps(meta, sort_keys=True))
        return ctx.artifact("reference", meta=meta)


def _side_outputs(comp, split, progress, what: str) -> dict[str, np.ndarray]:
    """What it does: a side component + its own split -> its stacked inputs and outputs {"in.<x>"/"out.<y>"}."""
    collected: dict[str, list[np.ndarray]] = {}
    with progress.task(f"torch fp32 {what}", len(split)) as task:
        for i in range(len(split)):
            sample = split.sample(i)
            for k in comp.iospec.input_names:
                collected.setdefault(f"in.{k}", []).append(sample[k])
            for k, v in run_torch(comp.module, comp.iospec, sample).items():
                collected.setdefault(f"out.{k}", []).append(v)
            task.advance()
    return {k: np.concatenate(v) for k, v in collected.items()}


def _component_outputs(components, dataset, split_name: str, progress) -> dict[str, dict[str, np.ndarray]]:
    """What it does: components + the dataset -> every component's inputs and outputs per sample (stacked), by
    running the fp32 torch components in chain order on the split (side components on their own data):
    {component: {"in.<x>"/"out.<y>": array}}."""
    from .models.components import chain_of, run_chain

    order, feeds = chain_of(components)
    split = dataset.split(split_name)
    what = split_name
    collected: dict[str, dict[str, list[np.ndarray]]] = {n: {} for n in order}

    def run_fn(name, inputs):
        comp = components[name]
        for k, v in inputs.items():
            collected[name].setdefault(f"in.{k}", []).append(v)
        outs = run_torch(comp.module, comp.iospec, inputs)
        for k, v in outs.items():
            collected[name].setdefault(f"out.{k}", []).append(v)
        return outs

    with progress.task(f"torch fp32 components on {what}", len(split)) as task:
        for i in range(len(split)):
            run_chain(order, feeds, run_fn, split.sample(i))
            task.advance()
    out = {n: {k: np.concatenate(v) for k, v in d.items()} for n, d in collected.items()}
    for name, comp in components.items():
        if comp.side:
            side = dataset.sub(comp.dataset, comp.iospec).split(split_name)
            out[name] = _side_outputs(comp, side, progress, f"{name} on {comp.dataset}/{split_name}")
    return {n: out[n] for n in components}


class ComponentReference(Stage):
    """fp32 torch components on eval and calibration: per-component references and calibration inputs."""

    name = "component_reference"
    version = 1
    consumes = ("torch",)
    produces = "reference"
    requires = ("torch",)
    extra = "torch"

    def config(self, ctx: StageContext) -> dict:
        """The fused splits, plus each side component's own splits (its data and IOSpec)."""
        cfg = {"eval": ctx.dataset.split_fingerprint("eval"),
               "calibration": ctx.dataset.split_fingerprint("calibration")}
        for name, spec in (ctx.side_iospecs or {}).items():
            sub_dir, iospec = spec
            sub = ctx.dataset.sub(sub_dir, iospec)
            cfg[f"side.{name}"] = {s: sub.split_fingerprint(s) for s in ("eval", "calibration")}
        return cfg

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        """What it does: torch artifact -> eval.<component>.{in,out}.<tensor>.npy and calibration.<component>.
        <input>.npy (all calibration samples; targets draw their subset like the fused model's)."""
        import torch

        factory = import_factory(ctx.release.model.factory)
        params = ctx.release.model.params
        components = factory.components(params, load_torch(artifact, factory, params))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # fixed thread count, like the fused reference
        try:
            per_split = {s: _component_outputs(components, ctx.dataset, s, ctx.progress)
                         for s in ("eval", "calibration")}
        finally:
            torch.set_num_threads(threads)
        for name, arrays in per_split["eval"].items():
            for key, value in arrays.items():
                np.save(ctx.workdir / f"eval.{name}.{key}.npy", value)
        for name, arrays in per_split["calibration"].items():
            for key, value in arrays.items():
                if key.startswith("in."):
                    np.save(ctx.workdir / f"calibration.{name}.{key[3:]}.npy", value)
        meta = {"components": list(components), "samples": len(ctx.dataset.split("eval")),
                "chain": [n for n, c in components.items() if not c.side],
                "side": {n: c.dataset for n, c in components.items() if c.side},
                "feeds_from": {n: dict(c.feeds_from) for n, c in components.items()},
                "iospecs": {n: c.iospec.model_dump(mode="json") for n, c in components.items()},
                "calibration_inputs": "fp32 torch components run on the calibration split"}
        (ctx.workdir / "component_reference.json").write_text(json.dumps(meta, sort_keys=True))
        return ctx.artifact("reference", meta=meta)
