"""Sensitivity pass: fp32 ONNX artifact + the target's calibration set -> the quantizable nodes ranked by the
fidelity int8 costs each of them alone.

Format-agnostic on purpose: the ranking names ONNX nodes, and keep_float entries are ONNX node names in every
format (onnx.py excludes them from QDQ, openvino.py finds their IR ops by name, tflite.py by value), so one
ranking serves all three branches. For each candidate node a copy of the graph runs that node in simulated int8
and everything else in fp32: its float activation inputs and outputs pass through QuantizeLinear/DequantizeLinear
with per-tensor ranges (global min/max over the calibration subset, the target's activation type and symmetry)
and its weights are fake-quantized (symmetric per output channel when the target is per-channel). The cost is
the mean (1 - cosine) of the model outputs against the unmodified graph on the first `sensitivity.samples`
calibration samples (never eval samples). One onnxruntime session per candidate: linear in the node count.

onnx and onnxruntime are imported inside the stage only.
"""
from __future__ import annotations

import json
import time

import numpy as np

from . import formats
from .artifact import Artifact
from .export import keep_float_patterns
from .stages import Stage, StageContext

# Ops that only move or reinterpret data: int8 costs nothing there beyond the quantization of the tensors they
# pass on, which is charged to the nodes computing those tensors. Gather counts when it reads a float table (an
# embedding: int8 weights).
_MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Identity", "Cast",
                    "Shape", "Constant", "ConstantOfShape", "Expand", "Tile", "Gather", "Size", "Range"})
# Input positions holding weights (fake-quantized per output channel: the axis) and biases (int32 in every
# quantizer, left exact here).
_WEIGHTS = {"Conv": {1: 0}, "ConvTranspose": {1: 1}, "Gather": {0: None}}
_BIASES = {"Conv": (2,), "ConvTranspose": (2,), "Gemm": (2,)}
_FLOAT = 1  # onnx.TensorProto.FLOAT
RANKING_FILE = "ranking.json"


def scheme(target) -> dict:
    """What it does: a target profile -> the int8 scheme the simulation uses (activation type and symmetry,
    weight symmetry, per-channel), as the format's quantizer applies the profile (formats.py Int8Scheme: e.g. NNCF
    picks activation symmetry from its preset, TFLite's activations are always int8)."""
    q, int8 = target.quantization, formats.get(target.format).int8
    symmetric = q.preset == "performance" if int8.activation_symmetry_from_preset else q.symmetric_activations
    return {"activation_type": int8.activation_type or q.activation_type,
            "symmetric_activations": symmetric, "symmetric_weights": q.symmetric_weights or int8.weights_always_symmetric,
            "per_channel": q.per_channel}


def quantized_op_types(target) -> set[str] | None:
    """What it does: a target -> the ONNX op types its quantizer touches, None when that is every op (TFLite full
    integer) or not known at the ONNX level (NNCF works on the IR). A node the quantizer leaves float costs nothing:
    onnxruntime's static QDQ leaves e.g. Log alone, so it is no candidate for an ONNX target."""
    if target.quantization.op_types is not None:
        return set(target.quantization.op_types)
    default = formats.get(target.format).int8.default_op_types
    return None if default is None else formats.resolve(default)(target)


def matches(pattern: str, node) -> bool:
    """A keep_float entry covers a node by name prefix or op type (as onnx.py applies it)."""
    return node.name.startswith(pattern) or node.op_type == pattern


def _weight_axis(node, index: int, inits: dict) -> int | None | bool:
    """What it does: node + input index -> per-channel axis of a weight (None: per-tensor weight), or False when the
    input is no weight (a constant operand, quantized like an activation)."""
    if node.op_type in _WEIGHTS:
        return _WEIGHTS[node.op_type].get(index, False)
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        if index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return (1 if attrs.get("transA", 0) else 0) if index == 0 else False
    if node.op_type == "MatMul" and inits[node.input[index]].ndim >= 2:
        return -1 if index == 1 else inits[node.input[index]].ndim - 2  # output columns of B, output rows of A
    return False


def fake_quant_weight(value: np.ndarray, axis: int | None, symmetric: bool) -> np.ndarray:
    """int8 round trip of a weight tensor, per channel along `axis` (None: one scale for the tensor)."""
    w = value.astype(np.float64)
    reduce = tuple(i for i in range(w.ndim) if axis is None or i != axis % w.ndim)
    if symmetric:
        scale = np.max(np.abs(w), axis=reduce, keepdims=True) / 127.0
        scale = np.where(scale > 0, scale, 1.0)
        return (np.clip(np.round(w / scale), -127, 127) * scale).astype(value.dtype)
    lo = np.minimum(np.min(w, axis=reduce, keepdims=True), 0.0)
    hi = np.maximum(np.max(w, axis=reduce, keepdims=True), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0)
    zero = np.round(-128 - lo / scale)
    return ((np.clip(np.round(w / scale) + zero, -128, 127) - zero) * scale).astype(value.dtype)


def activation_qparams(lo: float, hi: float, dtype: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """What it does: a tensor's calibrated range -> (scale, zero point) arrays for QuantizeLinear, the range widened
    to hold 0 as every quantizer does."""
    qmin, qmax = (-128, 127) if dtype == "int8" else (0, 255)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        bound = max(-lo, hi)
        scale = 2.0 * bound / (qmax - qmin) if bound > 0 else 1.0
        zero = 0 if dtype == "int8" else 128
    else:
        scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
        zero = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return np.array(scale, dtype=np.float32), np.array(zero, dtype=np.int8 if dtype == "int8" else np.uint8)


class _Graph:
    """The fp32 ONNX model, its float tensors, initializers and calibrated ranges; builds simulated copies."""

    def __init__(self, model, sch: dict):
        import onnx
        from onnx import numpy_helper

        self.onnx, self.model, self.scheme = onnx, model, sch
        typed = onnx.shape_inference.infer_shapes(model)
        g = typed.graph
        self.float_tensors = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)
                              if v.type.tensor_type.elem_type == _FLOAT}
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.float_tensors |= {n for n, v in self.inits.items() if v.dtype == np.float32}
        self.ranges: dict[str, tuple[float, float]] = {}

    def is_candidate(self, node) -> bool:
        if node.op_type in _MOVES and not (node.op_type == "Gather" and node.input[0] in self.inits):
            return False
        computed = [t for t in node.input if t and t in self.float_tensors
                    and (t not in self.inits or self.inits[t].size > 1)]
        return bool(computed) and any(o in self.float_tensors for o in node.output)

    def probe_outputs(self) -> list[str]:
        """Float tensors computed by nodes (their ranges are calibrated), graph outputs first."""
        names = [o.name for o in self.model.graph.output]
        for node in self.model.graph.node:
            names += [o for o in node.output if o in self.float_tensors and o not in names]
        return names

    def fake_quant_constant(self, node, index: int) -> np.ndarray:
        """What it does: a node's constant float input -> its int8 round trip: a weight per output channel (or per
        tensor), any other constant operand like an activation with its own range."""
        sch, value = self.scheme, self.inits[node.input[index]]
        axis = _weight_axis(node, index, self.inits)
        if axis is not False:
            return fake_quant_weight(value, axis if sch["per_channel"] else None, sch["symmetric_weights"])
        scale, zero = activation_qparams(float(value.min()), float(value.max()), sch["activation_type"],
                                         sch["symmetric_activations"])
        qmin, qmax = (-128, 127) if zero.dtype == np.int8 else (0, 255)
        q = np.clip(np.round(value / scale) + float(zero), qmin, qmax)
        return ((q - float(zero)) * scale).astype(value.dtype)

    def simulated(self, nodes: list) -> bytes:
        """What it does: the nodes to run in int8 -> a serialized copy of the model with Q/DQ around their float
        activations and fake-quantized weights; every other node stays fp32."""
        onnx, helper, numpy_helper = self.onnx, self.onnx.helper, self.onnx.numpy_helper
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        chosen = {n.name for n in nodes}
        extra_inits, built, new_nodes = [], set(), []
        sch = self.scheme

        def qdq(src: str, dst: str) -> list:
            scale, zero = activation_qparams(*self.ranges[src.removesuffix("__sens_raw")],
                                             sch["activation_type"], sch["symmetric_activations"])
            extra_inits.extend([numpy_helper.from_array(scale, f"{dst}__scale"),
                                numpy_helper.from_array(zero, f"{dst}__zero")])
            return [helper.make_node("QuantizeLinear", [src, f"{dst}__scale", f"{dst}__zero"], [f"{dst}__q"]),
                    helper.make_node("DequantizeLinear", [f"{dst}__q", f"{dst}__scale", f"{dst}__zero"], [dst])]

        for node in model.graph.node:
            if node.name not in chosen:
                new_nodes.append(node)
                continue
            for i, t in enumerate(node.input):
                if not t or t not in self.float_tensors or i in _BIASES.get(node.op_type, ()):
                    continue
                if t in self.inits:
                    name = f"{t}__sens_{node.name}_{i}"
                    extra_inits.append(numpy_helper.from_array(self.fake_quant_constant(node, i), name))
                    node.input[i] = name
                elif t in self.ranges:
                    dst = f"{t}__sens_in"
                    if dst not in built:
                        new_nodes.extend(qdq(t, dst))
                        built.add(dst)
                    node.input[i] = dst
            outputs = [(i, o) for i, o in enumerate(node.output) if o in self.float_tensors and o in self.ranges]
            for i, o in outputs:
                node.output[i] = f"{o}__sens_raw"
            new_nodes.append(node)
            for _, o in outputs:
                new_nodes.extend(qdq(f"{o}__sens_raw", o))
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
        model.graph.initializer.extend(extra_inits)
        return model.SerializeToString()


def _session(ort, model_bytes: bytes):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the simulated copies leave replaced initializers unused: ORT warns about each
    # Plain fake quantization: no QDQ fusion into integer kernels, so every candidate is measured the same way.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _calibrate_ranges(ort, graph: _Graph, calib) -> None:
    """Global min/max of every float tensor over the calibration subset (graph inputs from the data itself)."""
    onnx = graph.onnx
    probe = onnx.ModelProto()
    probe.CopyFrom(graph.model)
    present = {o.name for o in probe.graph.output}
    names = graph.probe_outputs()
    for name in names:
        if name not in present:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = _session(ort, probe.SerializeToString())
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for sample in calib:
        for name, value in zip(names, session.run(names, sample)):
            if value.size:
                lo[name], hi[name] = min(lo[name], float(value.min())), max(hi[name], float(value.max()))
    graph.ranges = {n: (lo[n], hi[n]) for n in names if np.isfinite(lo[n])}
    for name, value in calib.inputs.items():
        if name in graph.float_tensors:
            graph.ranges[name] = (float(value.min()), float(value.max()))


def _cost(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> tuple[float, float]:
    """What it does: simulated and fp32 outputs per sample -> (mean over outputs of mean(1 - cosine), top-1
    agreement of the first output)."""
    from .metrics import cosine_rows

    costs = []
    for k in range(len(reference[0])):
        got = np.concatenate([o[k] for o in outputs])
        ref = np.concatenate([r[k] for r in reference])
        costs.append(float(np.mean(1.0 - cosine_rows(got, ref))))
    main_got = np.concatenate([o[0] for o in outputs])
    main_ref = np.concatenate([r[0] for r in reference])
    return float(np.mean(costs)), float((main_got.argmax(-1) == main_ref.argmax(-1)).mean())


class Sensitivity(Stage):
    name = "sensitivity"
    version = 1
    consumes = ("onnx",)
    produces = "sensitivity"
    needs_calibration = True
    requires = ("onnx", "onnxruntime")
    extra = "onnx"

    def config(self, ctx: StageContext) -> dict:
        q = ctx.target.quantization
        op_types = quantized_op_types(ctx.target)
        return {"scheme": scheme(ctx.target), "samples": q.sensitivity.samples,
                "op_types": sorted(op_types) if op_types is not None else None,
                "keep_float": keep_float_patterns(ctx), "outputs": ctx.iospec.output_names}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        """What it does: fp32 ONNX -> ranking.json: every candidate node with its simulated int8 cost, worst first."""
        import onnx
        import onnxruntime as ort

        start = time.perf_counter()
        q = ctx.target.quantization
        graph = _Graph(onnx.load(str(artifact.main_file)), scheme(ctx.target))
        patterns = keep_float_patterns(ctx)
        op_types = quantized_op_types(ctx.target)
        candidates = [n for n in graph.model.graph.node if n.name and graph.is_candidate(n)
                      and (op_types is None or n.op_type in op_types)
                      and not any(matches(p, n) for p in patterns)]
        _calibrate_ranges(ort, graph, ctx.calibration)
        measured = list(ctx.calibration)[: q.sensitivity.samples]
        outputs = ctx.iospec.output_names
        base = _session(ort, graph.model.SerializeToString())
        reference = [base.run(outputs, s) for s in measured]
        rows = []
        with ctx.progress.task(f"sensitivity {len(candidates)} nodes x{len(measured)}", len(candidates)) as task:
            for node in candidates:
                session = _session(ort, graph.simulated([node]))
                cost, agreement = _cost([session.run(outputs, s) for s in measured], reference)
                also = [n.name for n in graph.model.graph.node if n.name != node.name and n.name.startswith(node.name)]
                rows.append({"node": node.name, "op_type": node.op_type, "cost": cost, "agreement": agreement,
                             **({"entry_also_matches": also} if also else {})})
                task.advance()
        rows.sort(key=lambda r: (-r["cost"], r["node"]))
        every = _session(ort, graph.simulated(candidates)) if candidates else base
        all_cost, all_agreement = _cost([every.run(outputs, s) for s in measured], reference)
        meta = {"ranking": rows, "candidates": len(candidates), "samples": len(measured),
                "calibration_samples": len(ctx.calibration), "scheme": scheme(ctx.target),
                "excluded_by_keep_float": patterns,
                "all_candidates": {"cost": all_cost, "agreement": all_agreement},
                "cost": "mean over outputs of mean(1 - cosine) vs the fp32 graph",
                "seconds": round(time.perf_counter() - start, 3)}
        (ctx.workdir / RANKING_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        return ctx.artifact("sensitivity", component=artifact.component, precision="fp32", meta=meta)
