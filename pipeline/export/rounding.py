"""Stage round_weights: choose how each int8 weight rounds (AdaRound), before any toolchain quantizes the graph.

Every int8 toolchain here rounds weights to the nearest level of a symmetric per-output-channel grid with step
max|w|/127 (onnxruntime QDQ with symmetric int8 weights: range [-127, 127]; NNCF: 256 levels from
-max*128/127 to max, step max/127; LiteRT: [-127, 127]). Rounding to nearest is optimal per weight, not per
layer: AdaRound (Nagel et al., 2020) learns, per weight, whether to round up or down so that the layer's
*output* on calibration inputs stays closest to fp32. This stage writes the chosen grid values back into the
fp32 ONNX graph (each channel's largest weight is kept, so every toolchain derives the same step); the format's
own quantizer then finds every weight already on its grid and keeps the learnt rounding. It changes only the
int8 chains' input graph: fp32 targets never see it, and verification still compares against fp32 torch.

Layers: Conv (any groups, explicit pads), Gemm (transA=0, alpha=1) and MatMul with a constant weight, minus the
keep_float nodes, limited to `model.weight_rounding.nodes` name prefixes when given. The layer inputs come from
onnxruntime running the fp32 graph on calibration samples (the standard, non-sequential AdaRound objective).
With `objective: exact` that objective is evaluated over every calibration input through the Gram matrices of
each layer's input patches (adaround.Quadratic): 3.2x less time than the default sampled mini-batches on
EfficientNet-Lite0's 51 layers (46.9 vs 149.0 s, one thread, random inputs) at a lower median error ratio (0.504
vs 0.521, both scored on every input); on the default release it moved single eval photos both ways, so sampled stays the default.
"""
from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator

import numpy as np

from ..errors import StageError
from ..stages import Stage, StageContext
from . import component_key, keep_float_in_component, keep_float_patterns
from .adaround import GRID_LEVELS, Quadratic, _forward, adaround, adaround_exact, grid_step  # noqa: F401 (re-exported)

INPUT_BUDGET_FLOATS = 128 * 1024 * 1024  # layer inputs held at once (512 MiB of float32)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def rounding_layers(model, skip: set[str], prefixes: list[str] | None) -> list[dict]:
    """What it does: an fp32 ONNX graph -> the layers whose constant weight can be re-rounded: one dict per node
    with its name, op, input tensor, weight initializer, output-channel axis and torch-side attributes."""
    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    layers = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.name in skip or len(node.input) < 2:
            continue
        if prefixes is not None and not any(node.name.startswith(p) for p in prefixes):
            continue
        w = inits.get(node.input[1])
        if w is None or uses[node.input[1]] != 1 or w.data_type != 1:  # float32 constant, used once
            continue
        a = _attrs(node)
        if node.op_type == "Conv":
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID") or len(w.dims) != 4:
                continue
            pads = list(a.get("pads", [0, 0, 0, 0]))
            layers.append(dict(name=node.name, op="conv", input=node.input[0], weight=w.name, axis=0,
                               stride=tuple(a.get("strides", [1, 1])), dilation=tuple(a.get("dilations", [1, 1])),
                               groups=int(a.get("group", 1)), pads=(pads[1], pads[3], pads[0], pads[2])))
        elif node.op_type == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or len(w.dims) != 2:
                continue
            layers.append(dict(name=node.name, op="linear", input=node.input[0], weight=w.name,
                               axis=0 if a.get("transB", 0) else 1))
        elif len(w.dims) == 2:
            layers.append(dict(name=node.name, op="linear", input=node.input[0], weight=w.name, axis=1))
    return layers


def layer_inputs(model_path: str, layers: list[dict], samples: list[dict]) -> Iterator[tuple[list[dict], dict]]:
    """What it does: the fp32 graph + layers + calibration samples -> chunks of (layers, {input name: stacked
    array}) bounded by INPUT_BUDGET_FLOATS, captured with onnxruntime (one thread)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(model_path)
    existing = {o.name for o in model.graph.output}
    names = list(dict.fromkeys(layer["input"] for layer in layers))
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    first = dict(zip(names, sess.run(names, samples[0])))
    chunks, current, size = [], [], 0
    for name in names:
        need = first[name].size * len(samples)
        if current and size + need > INPUT_BUDGET_FLOATS:
            chunks.append(current)
            current, size = [], 0
        current.append(name)
        size += need
    if current:
        chunks.append(current)
    for chunk in chunks:
        stacked = {n: [first[n]] for n in chunk}
        for sample in samples[1:]:
            for n, value in zip(chunk, sess.run(chunk, sample)):
                stacked[n].append(value)
        arrays = {n: np.concatenate(v, axis=0) if v[0].ndim == 4 else np.stack(v) for n, v in stacked.items()}
        yield [layer for layer in layers if layer["input"] in arrays], arrays


def layer_key(layer: dict, w: np.ndarray, inputs: np.ndarray, rounding, index: int) -> str:
    """What it does: one layer's geometry, fp32 weight, calibration inputs, AdaRound settings and seed -> the sha256
    its rounding is stored under. Node names stay out: the same layer in a fused graph and in a component graph
    (same weight, same inputs) is rounded once."""
    import hashlib

    from ..artifact import canonical_json

    h = hashlib.sha256()
    geometry = {k: v for k, v in layer.items() if k not in ("name", "input", "weight")}
    settings = rounding.model_dump(mode="json", exclude={"formats", "nodes", "samples", "seed"})
    h.update(canonical_json({"geometry": geometry, "settings": settings, "seed": rounding.seed + index,
                             "weight": [w.dtype.str, list(w.shape)], "inputs": [inputs.dtype.str,
                                                                                list(inputs.shape)]}).encode())
    h.update(np.ascontiguousarray(w).tobytes())
    h.update(np.ascontiguousarray(inputs).tobytes())
    return h.hexdigest()


def round_shared(memo, jobs: list[tuple], arrays: dict, rounding, task) -> dict:
    """What it does: layers to round (layer, weight, key, index) + their inputs -> {key: (weight, mse nearest, mse
    learnt, reused)}, through the memo: a layer already rounded (by this or any other graph's stage) is read back;
    one that another process is rounding right now is skipped, then waited for at the end, so two stages that
    share layers split them instead of both computing every one."""
    done: dict = {}

    def compute(layer, w, key, index):
        inputs = arrays[layer["input"]]
        if rounding.objective == "exact" and Quadratic.fits(layer, w.shape, inputs.shape):
            new, before, after = adaround_exact(layer, w, Quadratic(layer, w.shape, inputs), rounding.iterations,
                                                rounding.lr)
        else:
            new, before, after = adaround(layer, w, inputs, rounding.iterations, rounding.batch_size,
                                          rounding.crop, rounding.seed + index, rounding.lr)
        memo.put(key, {"weight": new, "mse": np.array([before, after], np.float64)})
        return new, before, after

    def from_memo(key):
        hit = memo.get(key)
        return None if hit is None else (hit["weight"], float(hit["mse"][0]), float(hit["mse"][1]))

    deferred = []
    for job in jobs:
        key = job[2]
        if key in done:
            continue
        hit = from_memo(key)
        if hit is None:
            with memo.claim(key, wait=False) as held:
                if not held:
                    deferred.append(job)
                    continue
                hit = from_memo(key)  # finished by another process between the two looks
                done[key] = (*(hit or compute(*job)), hit is not None)
        else:
            done[key] = (*hit, True)
        task.advance()
    for job in deferred:
        key = job[2]
        if key in done:
            continue
        with memo.claim(key, wait=True):
            hit = from_memo(key)
            done[key] = (*(hit or compute(*job)), hit is not None)
        task.advance()
    return done


class RoundWeights(Stage):
    """fp32 ONNX -> the same graph with AdaRound-chosen int8 grid values as weights (int8 chains only)."""

    name = "round_weights"
    version = 2  # 2: weight_rounding.objective (exact: every calibration input at once)
    consumes = ("onnx",)
    produces = "onnx"
    needs_calibration = True
    requires = ("onnx", "onnxruntime", "torch")
    extra = "onnx"

    def config(self, ctx: StageContext) -> dict:
        rounding = ctx.release.model.weight_rounding
        # formats only picks the chains that include this stage: it does not change the rounding
        return component_key(ctx, {"weight_rounding": rounding.model_dump(mode="json", exclude={"formats"}),
                                   "per_channel": ctx.target.quantization.per_channel,
                                   "keep_float": keep_float_patterns(ctx)})

    def run(self, artifact, ctx: StageContext):
        import onnx
        import torch
        from onnx import numpy_helper

        from .onnx import _keep_float_nodes

        rounding = ctx.release.model.weight_rounding
        q = ctx.target.quantization
        if not q.per_channel or not q.symmetric_weights:
            raise StageError(f"model.weight_rounding needs per-channel symmetric int8 weights; target "
                             f"'{ctx.target.name}' has per_channel={q.per_channel}, "
                             f"symmetric_weights={q.symmetric_weights}")
        model = onnx.load(str(artifact.main_file))
        nodes = [n.name for n in model.graph.node]
        patterns = keep_float_in_component(ctx, keep_float_patterns(ctx), nodes,
                                           (n.op_type for n in model.graph.node))
        skip = set(_keep_float_nodes(model, patterns))
        layers = rounding_layers(model, skip, rounding.nodes)
        if not layers:  # nothing to round: pass the graph through unchanged (same artifact identity, so the int8
            for rel in artifact.files:  # chain shares every later stage with the fp32 chain)
                (ctx.workdir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(artifact.path(rel), ctx.workdir / rel)
            return ctx.artifact(artifact.kind, component=artifact.component, precision=artifact.precision,
                                meta=artifact.meta)
        samples = list(ctx.calibration)[: rounding.samples]
        inits = {i.name: i for i in model.graph.initializer}
        report = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the chosen rounding must not depend on the machine's core count
        memo = ctx.memo("adaround")
        try:
            with ctx.progress.task(f"adaround {len(layers)} layers x{rounding.iterations}", len(layers)) as task:
                for chunk, arrays in layer_inputs(str(artifact.main_file), layers, samples) if layers else ():
                    jobs = []
                    for layer in chunk:
                        index = layers.index(layer)
                        w = numpy_helper.to_array(inits[layer["weight"]]).astype(np.float32)
                        key = layer_key(layer, w, arrays[layer["input"]], rounding, index)
                        jobs.append((layer, w, key, index))
                    done = round_shared(memo, jobs, arrays, rounding, task)
                    for layer, w, key, index in jobs:
                        new, before, after, _ = done[key]
                        inits[layer["weight"]].CopyFrom(numpy_helper.from_array(new, layer["weight"]))
                        report.append({"node": layer["name"], "mse_nearest": before, "mse_adaround": after})
        except Exception as err:
            raise StageError(f"weight rounding failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err
        finally:
            torch.set_num_threads(threads)
        out = ctx.workdir / "model.onnx"
        onnx.save(model, str(out))
        ratios = [r["mse_adaround"] / r["mse_nearest"] for r in report if r["mse_nearest"] > 0]
        meta = {"weight_rounding": {
            "method": rounding.method, "layers": len(report), "samples": len(samples),
            "iterations": rounding.iterations,
            "median_mse_ratio": float(np.median(ratios)) if ratios else None,
            "worst_mse_ratio": float(max(ratios)) if ratios else None,
            "per_layer": report}}
        return ctx.artifact("onnx", component=artifact.component, precision="fp32", meta=meta,
                            main_file="model.onnx")
