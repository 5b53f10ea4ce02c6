"""ONNX branch: torch fp32 artifact -> checked/slimmed ONNX fp32 -> static int8 QDQ calibrated per target.

onnx, onnxruntime and onnxslim are imported inside the stages only; onnxruntime's quantizers run in a toolchain child
process (pipeline/export/child.py).
"""
from __future__ import annotations

import warnings

from ..artifact import Artifact
from ..errors import StageError
from . import keep_float_in_component, keep_float_patterns, quantizer_key, record_applied, symmetric_int8
from ..stages import Stage, StageContext
from .child import run_stage_child, stage_job


def op_histogram(model) -> dict[str, int]:
    hist: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if not node.domain or node.domain == "ai.onnx" else f"{node.domain}.{node.op_type}"
        hist[key] = hist.get(key, 0) + 1
    return dict(sorted(hist.items()))


class ExportOnnx(Stage):
    name = "export_onnx"
    version = 1
    consumes = ("torch",)
    produces = "onnx"
    requires = ("torch", "onnx", "onnxslim")
    extra = "onnx"

    def config(self, ctx: StageContext) -> dict:
        cfg = {"onnx": ctx.release.export.onnx.model_dump(), "iospec": ctx.iospec.model_dump(mode="json")}
        if ctx.component != "model":  # only then: the fused graph's cache key stays as it was
            cfg["component"] = ctx.component
        return cfg

    @staticmethod
    def _module_and_example(artifact: Artifact, ctx: StageContext):
        """What it does: torch artifact + ctx.component -> (module to export, example inputs): the whole model or
        the component's torch view, on ctx.example_inputs()."""
        from ..torchmodel import import_factory, load_torch, torch_inputs

        factory = import_factory(ctx.release.model.factory)
        module = load_torch(artifact, factory, ctx.release.model.params)
        if ctx.component != "model":
            module = factory.components(ctx.release.model.params, module)[ctx.component].module
        return module, torch_inputs(ctx.iospec, ctx.example_inputs())

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        import onnx
        import torch

        settings = ctx.release.export.onnx
        module, example = self._module_and_example(artifact, ctx)
        path = ctx.workdir / "model.onnx"
        try:
            with warnings.catch_warnings():
                # "Only steps=1 can be constant folded" (TF-SAME pads) and the legacy-exporter notice: onnxslim
                # folds what torch leaves; nothing a user can act on.
                warnings.filterwarnings("ignore", message=".*[Cc]onstant folding.*")
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(module, example, str(path), dynamo=False, opset_version=settings.opset,
                                  input_names=ctx.iospec.input_names, output_names=ctx.iospec.output_names,
                                  do_constant_folding=True)
        except Exception as err:
            raise StageError(f"torch.onnx.export failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err
        model = onnx.load(str(path))
        nodes_before = len(model.graph.node)
        slimmed = False
        if settings.slim:
            import onnxslim

            model = onnxslim.slim(model)
            slimmed = True
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as err:
            raise StageError(f"exported ONNX fails onnx.checker: {str(err).splitlines()[0]}") from err
        onnx.save(model, str(path))
        meta = {"opset": settings.opset, "nodes_exported": nodes_before, "nodes": len(model.graph.node),
                "slimmed": slimmed, "ops": op_histogram(model)}
        return ctx.artifact("onnx", component=ctx.component, precision="fp32", meta=meta,
                            main_file="model.onnx")


def default_op_types(target) -> set[str]:
    """What it does: a target -> the ONNX op types quantize_static touches when op_types is not set (its default
    op_types_to_quantize: every op of onnxruntime's QDQ and QLinear registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) | set(QLinearOpsRegistry)


def _keep_float_nodes(model, patterns: list[str]) -> list[str]:
    """Node names that match a keep_float entry by name prefix or op type; unmatched entries are errors."""
    names = []
    for pattern in patterns:
        hits = [n.name for n in model.graph.node if n.name.startswith(pattern) or n.op_type == pattern]
        if not hits:
            raise StageError(f"quantization.keep_float entry '{pattern}' matches no node name or op type")
        names.extend(hits)
    return sorted(set(names))


def io_quantization(model) -> dict[str, dict]:
    """Scale/zero-point of graph inputs (first QuantizeLinear) and outputs (last DequantizeLinear), if any."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    values = {**inits, **consts}
    graph_inputs = {i.name for i in model.graph.input}
    graph_outputs = {o.name for o in model.graph.output}
    out: dict[str, dict] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in graph_inputs:
            tensor = node.input[0]
        elif node.op_type == "DequantizeLinear" and node.output[0] in graph_outputs:
            tensor = node.output[0]
        else:
            continue
        scale = values.get(node.input[1])
        zp = values.get(node.input[2]) if len(node.input) > 2 else None
        if scale is None or scale.size != 1:
            continue
        out[tensor] = {"scale": float(scale.reshape(())),
                       "zero_point": int(zp.reshape(())) if zp is not None else 0,
                       "dtype": str(zp.dtype) if zp is not None else "uint8"}
    return out


def weight_only_int8(model, nodes: set[str]) -> list[str]:
    """What it does: an ONNX graph + names of float-kept nodes -> the same graph (changed in place) where each of
    those Conv/MatMul/Gemm nodes reads its constant float32 weight through DequantizeLinear from an int8 copy
    (symmetric_int8: per output channel); returns the nodes changed. Compute stays float."""
    from collections import Counter

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    changed, new_nodes = [], []
    for node in model.graph.node:
        if node.name not in nodes or node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        slot = 1
        if node.op_type == "MatMul" and node.input[0] in inits and node.input[1] not in inits:
            slot = 0  # constant @ activation (e.g. a filterbank): its rows are the output channels
        init = inits.get(node.input[slot])
        if init is None or init.data_type != onnx.TensorProto.FLOAT or uses[init.name] != 1 or len(init.dims) < 2:
            continue
        w = numpy_helper.to_array(init)
        if node.op_type == "Conv":
            axis = 0
        elif slot == 0:
            axis = w.ndim - 2
        elif node.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        else:
            axis = w.ndim - 1
        q, scale = symmetric_int8(w, axis)
        base = init.name
        model.graph.initializer.remove(init)
        model.graph.initializer.extend([numpy_helper.from_array(q, f"{base}_int8"),
                                        numpy_helper.from_array(scale, f"{base}_int8_scale"),
                                        numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8),
                                                                f"{base}_int8_zero_point")])
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_int8_scale",
                                                               f"{base}_int8_zero_point"], [base],
                                          name=f"{node.name}_weight_DequantizeLinear", axis=axis))
        changed.append(node.name)
    for i, node in enumerate(new_nodes):
        model.graph.node.insert(i, node)
    return changed


def _ort_quantize(what: str, call) -> None:
    """Runs one onnxruntime quantizer call (in the quantize_onnx child): its failure becomes one StageError line."""
    try:
        call()
    except Exception as err:
        raise StageError(f"onnxruntime {what} failed: {type(err).__name__}: {str(err).splitlines()[0]}") from err


def _reload(out_path, excluded: list[str], ctx: StageContext):
    """The quantizer's output -> (the model, the kept-float nodes given int8 weights by model.kept_float_weights)."""
    import onnx

    qmodel = onnx.load(str(out_path))
    weight_only = []
    if ctx.release.model.kept_float_weights == "int8":
        weight_only = weight_only_int8(qmodel, set(excluded))
        onnx.save(qmodel, str(out_path))
    return qmodel, weight_only


def gemm_to_matmul(model) -> list[str]:
    """What it does: rewrites in place each Gemm with a constant B, alpha = beta = 1 and no transA as MatMul (B
    transposed once when transB) plus an Add of its bias; returns their names. onnxruntime's dynamic quantizer
    has MatMulInteger for MatMul but nothing for Gemm (onnxslim writes a transformer's Linear layers as Gemm)."""
    from onnx import helper, numpy_helper

    from collections import Counter

    inits = {i.name: i for i in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    nodes, changed = [], []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if uses[weight] > 1:  # shared with another node: transpose a copy
                weight = f"{weight}_t"
                model.graph.initializer.append(numpy_helper.from_array(
                    numpy_helper.to_array(inits[node.input[1]]).T.copy(), weight))
            else:
                inits[weight].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        changed.append(node.name)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return changed


def _constant_matmuls(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _blockwise(model, patterns: list[str]):
    """MatMuls named by quantization.blockwise -> int8 weights in 128-input blocks (MatMulNBits, accuracy level 4:
    activations quantized per block at run time, int8 dot products); returns (model, their names)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    candidates = _constant_matmuls(model)
    chosen = [n for n in candidates if any(n.startswith(p) for p in patterns)]
    missing = [p for p in patterns if not any(n.startswith(p) for n in candidates)]
    if missing:
        raise StageError(f"quantization.blockwise entry '{missing[0]}' names no MatMul with constant weights here")
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK, is_symmetric=True, accuracy_level=4, bits=8,
                                          op_types_to_quantize=("MatMul",), quant_format=QuantFormat.QOperator)
    quantizer = MatMulNBitsQuantizer(model, algo_config=config,
                                     nodes_to_exclude=[n for n in candidates if n not in chosen])
    quantizer.process()
    return quantizer.model.model, chosen


BLOCK = 128  # MatMulNBits block: 384- and 1536-wide inputs split evenly; 32 was 0.0007 cosine better, 1.2x slower


def _quantize_dynamic(model, excluded: list[str], patterns: list[str], ctx: StageContext, artifact: Artifact):
    """activations: dynamic -> onnxruntime quantize_dynamic (int8 weights per output channel, uint8 activations
    quantized per tensor at run time by DynamicQuantizeLinear), blockwise MatMulNBits where listed."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = ctx.target.quantization
    if q.activation_type != "uint8" or q.symmetric_activations:
        raise StageError(f"target '{ctx.target.name}': activations: dynamic quantizes activations as asymmetric "
                         "uint8 (DynamicQuantizeLinear); set activation_type: uint8, symmetric_activations: false")
    op_types = list(q.op_types or ["MatMul", "Gemm", "Gather"])
    rewritten = gemm_to_matmul(model) if "Gemm" in op_types else []  # quantized as the MatMuls they become
    op_types = sorted({"MatMul" if t == "Gemm" else t for t in op_types})
    blockwise = []
    if q.blockwise:
        model, blockwise = _blockwise(model, q.blockwise)
    out_path = ctx.workdir / "model.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        prepared = f"{scratch}/prepared.onnx"
        onnx.save(model, prepared)
        with ctx.progress.task("quantize weights (dynamic activations)", 1) as task:
            _ort_quantize("quantize_dynamic", lambda: quantize_dynamic(
                prepared, str(out_path), op_types_to_quantize=op_types, per_channel=q.per_channel,
                weight_type={"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[q.weight_type],
                nodes_to_exclude=excluded, extra_options={"WeightSymmetric": q.symmetric_weights}))
            task.advance()
    qmodel, weight_only = _reload(out_path, excluded, ctx)
    ops = op_histogram(qmodel)
    meta = {"ops": ops, "nodes": len(qmodel.graph.node), "kept_float_nodes": excluded,
            "weight_only_int8_nodes": weight_only, "blockwise_nodes": blockwise, "gemm_as_matmul": rewritten,
            "activations": "dynamic", "io_quantization": io_quantization(qmodel),
            "quantized_weights": ops.get("MatMulInteger", 0) + ops.get("MatMulNBits", 0) > 0,
            "calibration": {"method": "none (activations quantized at run time)", "samples": 0}}
    return record_applied(ctx, meta, patterns)


class _Reader:
    """onnxruntime CalibrationDataReader over a CalibrationSet (batch-1 dicts), with a progress bar."""

    def __init__(self, calib, task):
        self._iter = iter(calib)
        self._task = task

    def get_next(self):
        sample = next(self._iter, None)
        if sample is not None:
            self._task.advance()
        return sample

    def rewind(self):  # not used by quantize_static, kept for the interface
        pass


class QuantizeOnnx(Stage):
    name = "quantize_onnx"
    version = 1
    consumes = ("onnx",)
    produces = "onnx"
    needs_calibration = True
    requires = ("onnx", "onnxruntime")
    extra = "onnx"

    def config(self, ctx: StageContext) -> dict:
        return quantizer_key(ctx)

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        # onnxruntime's quantizers log through the root logger (logging.warning: the first call would also give the
        # root logger a handler): they run in a child process, whose root records arrive as onnxruntime.quantization.
        meta = run_stage_child("pipeline.export.onnx:quantize_in_child", artifact, ctx, what="onnxruntime quantizer",
                               log_name="onnxruntime.quantization")
        return ctx.artifact("onnx", component=artifact.component, precision="int8", meta=meta,
                            main_file="model.onnx")


def quantize_in_child(job, progress) -> dict:
    """Child side of quantize_onnx: (fp32 ONNX artifact, ctx) -> int8 model.onnx in ctx.workdir; returns its meta."""
    artifact, ctx = stage_job(job, progress)
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q, c = ctx.target.quantization, ctx.target.calibration
    calib = ctx.calibration
    model = onnx.load(str(artifact.main_file))
    patterns = keep_float_in_component(ctx, keep_float_patterns(ctx), (n.name for n in model.graph.node),
                                       (n.op_type for n in model.graph.node))
    excluded = _keep_float_nodes(model, patterns)
    if q.activations == "dynamic":
        return _quantize_dynamic(model, excluded, patterns, ctx, artifact)
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = {"minmax": CalibrationMethod.MinMax, "toolchain_default": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[c.method]
    extra = {"ActivationSymmetric": q.symmetric_activations, "WeightSymmetric": q.symmetric_weights}
    if c.method == "percentile":
        extra["CalibPercentile"] = c.percentile
    out_path = ctx.workdir / "model.onnx"
    # quantize_static writes '<input>-inferred.onnx' beside its input and deletes it: never beside a cache entry
    # (read-only by contract, and shared by concurrent quantizations of the same graph for other devices)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ep-ortq-") as scratch:
        prepared = f"{scratch}/model.onnx"
        onnx.save(model, prepared)
        with ctx.progress.task(f"calibrate {c.method} x{len(calib)}", len(calib)) as task:
            _ort_quantize("quantize_static", lambda: quantize_static(
                prepared, str(out_path), _Reader(calib, task), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=q.op_types, per_channel=q.per_channel,
                activation_type=qtype[q.activation_type], weight_type=qtype[q.weight_type],
                nodes_to_exclude=excluded, calibrate_method=method, extra_options=extra))
    qmodel, weight_only = _reload(out_path, excluded, ctx)
    ops = op_histogram(qmodel)
    meta = {"ops": ops, "nodes": len(qmodel.graph.node), "kept_float_nodes": excluded,
            "weight_only_int8_nodes": weight_only,
            "io_quantization": io_quantization(qmodel),
            "quantized_weights": ops.get("DequantizeLinear", 0) > 0,
            "calibration": {"method": c.method, "samples": len(calib)}}
    return record_applied(ctx, meta, patterns)
