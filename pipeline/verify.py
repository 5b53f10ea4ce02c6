"""Verification: one exported artifact + the fp32 torch reference -> fidelity metrics and golden vectors.

Runs the artifact through the same runtime code the device agent uses (targets/agent.py) on the held-out
eval split, sample by sample at batch 1, as a device would.
"""
from __future__ import annotations

import json

import numpy as np

from .artifact import Artifact
from .errors import StageError
from .formats import FORMAT_OF_KIND, MODEL_KINDS
from .metrics import compare, cosine_rows, ranking_metrics  # noqa: F401 (re-exported: callers import them here)
from .stages import Stage, StageContext


def adapt_sample(sample: dict[str, np.ndarray], artifact: Artifact) -> dict[str, np.ndarray]:
    """IOSpec-layout inputs -> the artifact's own input layout (e.g. NCHW -> NHWC after onnx2tf).

    Exporters that change an input's layout record `meta["input_layouts"][name] = {"perm": [...], ...}`.
    """
    layouts = artifact.meta.get("input_layouts") or {}
    out = {}
    for name, value in sample.items():
        perm = (layouts.get(name) or {}).get("perm")
        out[name] = np.ascontiguousarray(value.transpose(perm)) if perm else value
    return out


class Verify(Stage):
    name = "verify"
    version = 1
    consumes = MODEL_KINDS
    produces = "verification"
    requires = ("numpy",)
    extra = ""

    def config(self, ctx: StageContext) -> dict:
        g = ctx.target.gates
        cfg = {"golden_count": ctx.release.golden_count, "atol": g.golden_atol, "rtol": g.golden_rtol,
               "threads": ctx.target.benchmark.threads, "reference": ctx.deps["reference"].sha256}
        if ctx.host is not None:  # outputs computed by this machine's runtime: its CPU and version are part of them
            cfg["verified_on"] = ctx.host.identity(ctx.target.runtime)
        if ctx.target.runtime_options:  # the session is opened with them (keys without any stay as they were)
            cfg["runtime_options"] = dict(sorted(ctx.target.runtime_options.items()))
        if ctx.target.verify_on_device:  # the samples (and host outputs) the device will be checked on
            cfg["on_device_samples"] = ctx.target.verify_on_device
        return cfg

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        from targets.agent import open_model, write_golden

        ref_art = ctx.deps["reference"]
        fmt = FORMAT_OF_KIND[artifact.kind]
        try:
            session = open_model(str(artifact.main_file), fmt, ctx.target.benchmark.threads,
                                 ctx.target.runtime_options or None)
        except Exception as err:
            raise StageError(f"{fmt} runtime cannot load the artifact: {str(err).splitlines()[0]}") from err
        split = ctx.dataset.split("eval")
        collected: dict[str, list[np.ndarray]] = {n: [] for n in ctx.iospec.output_names}
        try:
            # Converters may rename outputs (e.g. Identity, output_0); the agent maps IOSpec names onto them.
            names = session.map_outputs(ctx.iospec.output_names)
        except Exception as err:
            raise StageError(f"{fmt} artifact outputs do not match the IOSpec: {str(err).splitlines()[0]}") from err
        with ctx.progress.task(f"verify {ctx.target.name} on eval", len(split)) as task:
            for i in range(len(split)):
                try:
                    out = session.run(adapt_sample(split.sample(i), artifact))
                except Exception as err:  # the agent's AgentError: one line naming the input
                    raise StageError(f"{fmt} runtime failed on eval sample {i}: {str(err).splitlines()[0]}") from err
                for name in collected:
                    collected[name].append(np.asarray(out[names[name]], dtype=np.float32))
                task.advance()
        outputs = {k: np.concatenate(v) for k, v in collected.items()}
        reference = {n: np.load(ref_art.path(f"eval.{n}.npy")) for n in ctx.iospec.output_names}
        labels = np.load(ref_art.path("labels.npy")) if "labels.npy" in ref_art.files else None
        result = compare(outputs, reference, labels, ref_art.meta.get("accuracy"), ctx.iospec.output_names[0])
        result["runtime"] = {"name": session.runtime_name, "version": session.runtime_version}
        k = min(ctx.release.golden_count, len(split))
        g = ctx.target.gates
        write_golden(ctx.workdir / "golden", [adapt_sample(split.sample(i), artifact) for i in range(k)],
                     [{n: outputs[n][i : i + 1] for n in outputs} for i in range(k)], g.golden_atol, g.golden_rtol)
        n_dev = min(ctx.target.verify_on_device, len(split))
        if n_dev:
            from .device_check import write_set

            feeds = [adapt_sample(split.sample(i), artifact) for i in range(n_dev)]
            write_set(ctx.workdir / "on_device" / "model", feeds, outputs, reference, labels)
        (ctx.workdir / "verification.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return ctx.artifact("verification", component=artifact.component, precision=artifact.precision, meta=result)


def gate_failures(result: dict, gates) -> list[str]:
    """Human-readable reasons a verification result fails the target's gates (empty = pass)."""
    reasons = []
    drop = result.get("accuracy_drop_pt")
    if drop is not None and drop > gates.max_accuracy_drop_pt:
        reasons.append(f"accuracy drop {drop:.2f} pt > {gates.max_accuracy_drop_pt} pt")
    if gates.min_agreement is not None and result["agreement"] < gates.min_agreement:
        reasons.append(f"top-1 agreement {result['agreement']:.4f} < {gates.min_agreement}")
    if gates.min_cosine is not None:
        for name, m in result["outputs"].items():
            if m["cosine_mean"] < gates.min_cosine:
                reasons.append(f"output '{name}' cosine {m['cosine_mean']:.4f} < {gates.min_cosine}")
        # side components (not on the end-to-end chain, e.g. a text encoder) answer to the cosine gate on their own
        for comp in result.get("side_components", []):
            for name, m in result["components"][comp]["outputs"].items():
                if m["cosine_mean"] < gates.min_cosine:
                    reasons.append(f"component '{comp}' output '{name}' cosine {m['cosine_mean']:.4f} "
                                   f"< {gates.min_cosine}")
    return reasons


def op_violations(ops: dict[str, int], allowed: list[str] | None, denied: list[str]) -> list[str]:
    """Op types of an artifact that a target does not allow (fnmatch patterns, e.g. 'Flex*')."""
    from fnmatch import fnmatchcase

    bad = sorted(op for op in ops if any(fnmatchcase(op, pat) for pat in denied))
    if allowed is not None:
        bad += sorted(op for op in ops if op not in bad and not any(fnmatchcase(op, pat) for pat in allowed))
    return bad


def _open_component(art: Artifact, name: str, iospec_outputs: list[str], threads: int, options: dict | None = None):
    """What it does: one component artifact -> (agent session, IOSpec output name -> session output name)."""
    from targets.agent import open_model

    fmt = FORMAT_OF_KIND[art.kind]
    try:
        session = open_model(str(art.main_file), fmt, threads, options or None)
        return session, session.map_outputs(iospec_outputs)
    except Exception as err:
        raise StageError(f"{fmt} runtime cannot load component '{name}': {str(err).splitlines()[0]}") from err


def _run_component(session, names: dict[str, str], art: Artifact, feeds: dict, where: str) -> dict[str, np.ndarray]:
    """What it does: a session + IOSpec-layout feeds -> {IOSpec output name: float32 array}."""
    try:
        out = session.run(adapt_sample(feeds, art))
    except Exception as err:  # the agent's AgentError: one line naming the input
        raise StageError(f"runtime failed on {where}: {str(err).splitlines()[0]}") from err
    return {n: np.asarray(out[s], dtype=np.float32) for n, s in names.items()}


class VerifyComponents(Stage):
    """Component artifacts of one target -> per-component fidelity vs the fp32 torch components, end-to-end
    fidelity of the chained artifacts vs the fp32 fused reference (the gates apply to this), golden per component."""

    name = "verify_components"
    version = 1
    consumes = ()
    produces = "verification"
    requires = ("numpy",)
    extra = ""

    def config(self, ctx: StageContext) -> dict:
        return Verify.config(self, ctx)

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        """What it does: deps component.<name> + reference + component_reference -> verification.json, golden/<c>/."""
        from targets.agent import write_golden

        cref = ctx.deps["component_reference"]
        arts = {n: ctx.deps[f"component.{n}"] for n in cref.meta["components"]}
        threads = ctx.target.benchmark.threads
        specs = {n: _component_spec(cref, n) for n in arts}
        opened = {n: _open_component(a, n, specs[n][1], threads, ctx.target.runtime_options)
                  for n, a in arts.items()}
        split = ctx.dataset.split("eval")
        per_component, golden, on_device = {}, {}, {}
        for n, art in arts.items():
            outs, feeds = self._component_outputs(opened[n], art, cref, n, specs[n])
            k = min(ctx.release.golden_count, len(feeds))
            reference = {o: np.load(cref.path(f"eval.{n}.out.{o}.npy")) for o in specs[n][1]}
            n_dev = min(ctx.target.verify_on_device, len(feeds))
            if n_dev:
                on_device[n] = ([adapt_sample(feeds[i], art) for i in range(n_dev)], outs, reference)
            per_component[n] = compare(outs, reference, None, None, specs[n][1][0])
            golden[n] = ([adapt_sample(feeds[i], art) for i in range(k)],
                         [{o: outs[o][i : i + 1] for o in outs} for i in range(k)])
        result = self._end_to_end(ctx, arts, opened, split)
        result["components"] = per_component
        result["side_components"] = sorted(cref.meta.get("side", {}))
        first = next(iter(opened.values()))[0]
        result["runtime"] = {"name": first.runtime_name, "version": first.runtime_version}
        g = ctx.target.gates
        for n, (samples, expected) in golden.items():
            write_golden(ctx.workdir / "golden" / n, samples, expected, g.golden_atol, g.golden_rtol)
        for n, (feeds, host, reference) in on_device.items():
            from .device_check import write_set

            write_set(ctx.workdir / "on_device" / n, feeds, host, reference, None)
        (ctx.workdir / "verification.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return ctx.artifact("verification", component="components", precision=next(iter(arts.values())).precision,
                            meta=result)

    @staticmethod
    def _component_outputs(opened, art, cref, name, spec):
        """What it does: one component, fed the fp32 torch inputs on eval (a side component: its own eval data)
        -> (stacked outputs, per-sample feeds)."""
        session, names = opened
        inputs = {i: np.load(cref.path(f"eval.{name}.in.{i}.npy")) for i in spec[0]}
        count = len(next(iter(inputs.values())))
        feeds = [{i: v[j : j + 1] for i, v in inputs.items()} for j in range(count)]
        collected = [_run_component(session, names, art, f, f"component '{name}' eval sample {j}")
                     for j, f in enumerate(feeds)]
        return {o: np.concatenate([c[o] for c in collected]) for o in spec[1]}, feeds

    @staticmethod
    def _end_to_end(ctx, arts, opened, split) -> dict:
        """What it does: the chained component artifacts on eval -> compare() vs the fused fp32 reference."""
        from .models.components import run_chain

        ref_art = ctx.deps["reference"]
        cref_meta = ctx.deps["component_reference"].meta
        wiring = cref_meta["feeds_from"]
        order = [n for n in cref_meta.get("chain", list(arts))]
        collected: dict[str, list[np.ndarray]] = {n: [] for n in ctx.iospec.output_names}
        with ctx.progress.task(f"verify {ctx.target.name} components end to end", len(split)) as task:
            for i in range(len(split)):
                run_fn = lambda n, feeds: _run_component(*opened[n], arts[n], feeds, f"component '{n}' sample {i}")
                produced: dict[str, np.ndarray] = {}
                for outs in run_chain(order, wiring, run_fn, split.sample(i)).values():
                    produced.update(outs)  # a model output may come from any chained component (logits, scores)
                for name in collected:
                    collected[name].append(produced[name])
                task.advance()
        outputs = {k: np.concatenate(v) for k, v in collected.items()}
        reference = {n: np.load(ref_art.path(f"eval.{n}.npy")) for n in ctx.iospec.output_names}
        labels = np.load(ref_art.path("labels.npy")) if "labels.npy" in ref_art.files else None
        return compare(outputs, reference, labels, ref_art.meta.get("accuracy"), ctx.iospec.output_names[0])


def _component_spec(cref: Artifact, name: str) -> tuple[list[str], list[str]]:
    """What it does: component reference + component name -> (input names, output names) in IOSpec order."""
    spec = cref.meta["iospecs"][name]
    return [t["name"] for t in spec["inputs"]], [t["name"] for t in spec["outputs"]]
