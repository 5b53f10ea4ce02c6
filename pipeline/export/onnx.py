"""ONNX branch: torch fp32 artifact -> checked/slimmed ONNX fp32 -> static int8 QDQ calibrated per target.

onnx, onnxruntime and onnxslim are imported inside the stages only.
"""
from __future__ import annotations

import logging
import warnings

from ..artifact import Artifact
from ..errors import StageError
from . import keep_float_in_component, keep_float_patterns, quantizer_key, record_applied, symmetric_int8
from ..stages import Stage, StageContext


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
        from ..load import import_factory, load_torch, torch_inputs

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
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        q, c = ctx.target.quantization, ctx.target.calibration
        calib = ctx.calibration
        model = onnx.load(str(artifact.main_file))
        patterns = keep_float_in_component(ctx, keep_float_patterns(ctx), (n.name for n in model.graph.node),
                                           (n.op_type for n in model.graph.node))
        excluded = _keep_float_nodes(model, patterns)
        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        method = {"minmax": CalibrationMethod.MinMax, "toolchain_default": CalibrationMethod.MinMax,
                  "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[c.method]
        extra = {"ActivationSymmetric": q.symmetric_activations, "WeightSymmetric": q.symmetric_weights}
        if c.method == "percentile":
            extra["CalibPercentile"] = c.percentile
        out_path = ctx.workdir / "model.onnx"
        logging.disable(logging.WARNING)  # ORT logs advice to the root logger; our report says what matters
        try:
            with ctx.progress.task(f"calibrate {c.method} x{len(calib)}", len(calib)) as task:
                quantize_static(str(artifact.main_file), str(out_path), _Reader(calib, task),
                                quant_format=QuantFormat.QDQ, op_types_to_quantize=q.op_types,
                                per_channel=q.per_channel, activation_type=qtype[q.activation_type],
                                weight_type=qtype[q.weight_type], nodes_to_exclude=excluded,
                                calibrate_method=method, extra_options=extra)
        except Exception as err:
            raise StageError(f"onnxruntime quantize_static failed: {type(err).__name__}: {str(err).splitlines()[0]}"
                             ) from err
        finally:
            logging.disable(logging.NOTSET)
        qmodel = onnx.load(str(out_path))
        weight_only = []
        if ctx.release.model.kept_float_weights == "int8":
            weight_only = weight_only_int8(qmodel, set(excluded))
            onnx.save(qmodel, str(out_path))
        ops = op_histogram(qmodel)
        meta = {"ops": ops, "nodes": len(qmodel.graph.node), "kept_float_nodes": excluded,
                "weight_only_int8_nodes": weight_only,
                "io_quantization": io_quantization(qmodel),
                "quantized_weights": ops.get("DequantizeLinear", 0) > 0,
                "calibration": {"method": c.method, "samples": len(calib)}}
        record_applied(ctx, meta, patterns)
        return ctx.artifact("onnx", component=artifact.component, precision="int8", meta=meta,
                            main_file="model.onnx")
