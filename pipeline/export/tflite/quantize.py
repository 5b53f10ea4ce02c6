"""SavedModel -> full-integer int8 TFLite (quantize_tflite): calibrated static int8 with keep_float exceptions,
or dynamic-range int8; then the flatbuffer rewrites (rewrite.py) and the full-integer check.

The quantizer runs in a toolchain child process (convert.py says why); tensorflow, onnx and the LiteRT
interpreter are imported there only.
"""
from __future__ import annotations

import json

from ...artifact import Artifact
from ...errors import StageError
from ...stages import Stage, StageContext
from .. import keep_float_in_component, keep_float_patterns, quantizer_key, record_applied
from ..child import run_stage_child, stage_job
from .convert import TFLITE_ENV, _convert, _import_tf, _write_tflite
from .flatbuffer import float_ops
from .keep_float import keep_float_scope
from .rewrite import drop_float_round_trips, weight_only_int8_tflite


def _check_settings(ctx: StageContext, keep: list[str]) -> None:
    """Settings TFLite's int8 scheme cannot honour fail here instead of being silently replaced."""
    q, c = ctx.target.quantization, ctx.target.calibration
    problems = []
    if c.method not in ("minmax", "toolchain_default"):  # min/max is TFLiteConverter's only (and default) method
        problems.append(f"calibration.method '{c.method}' (TFLiteConverter calibrates min/max only)")
    if q.activation_type != "int8" or q.weight_type != "int8":
        problems.append("activation_type/weight_type other than int8 (TFLite int8 kernels are int8 x int8)")
    if q.symmetric_activations or not q.symmetric_weights:
        problems.append("symmetric_activations: true or symmetric_weights: false (TFLite: asymmetric "
                        "activations, symmetric weights)")
    if q.op_types is not None:
        problems.append("op_types (TFLite quantizes every op it can; list exceptions in keep_float)")
    if keep and q.io_dtype == "uint8":
        problems.append("io_dtype 'uint8' with keep_float (selective quantization gives float32 or int8 I/O)")
    if problems:
        raise StageError(f"target '{ctx.target.name}': quantize_tflite cannot honour {problems[0]}")


def _representative(calib, artifact: Artifact, task):
    """Calibration samples as the SavedModel signature takes them: its names, dtypes (int64 tokens stay integer)
    and layout (NHWC images)."""
    import numpy as np

    from ...verify import adapt_sample

    inputs = artifact.meta["signature"]["inputs"]

    def generate():
        for sample in calib:
            adapted = adapt_sample(sample, artifact)
            task.advance()
            yield {name: np.ascontiguousarray(adapted[name], dtype=spec["dtype"]) for name, spec in inputs.items()}

    return generate


def _quantize(tf, artifact: Artifact, representative, ctx: StageContext, keep_tensors: set[str]) -> bytes:
    q = ctx.target.quantization

    def converter():
        conv = tf.lite.TFLiteConverter.from_saved_model(str(artifact.main_file))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv._experimental_disable_per_channel = not q.per_channel  # per-channel is TFLite's default for conv/FC
        return conv

    if not keep_tensors:
        def build() -> bytes:
            conv = converter()
            io = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[q.io_dtype]
            conv.inference_input_type = conv.inference_output_type = io  # integer token inputs stay integer
            return conv.convert()
    else:
        def build() -> bytes:
            # TFLite's documented route to selective quantization: the listed ops stay float, the rest is int8.
            # fully_quantize also makes the model's float inputs/outputs int8; without it they stay float32.
            options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=sorted(keep_tensors),
                                                                    fully_quantize=q.io_dtype == "int8")
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_options=options)
            return debugger.get_nondebug_quantized_model()

    return _convert(build, "TFLiteConverter (full-integer int8)")


def _io_quantization(session, artifact: Artifact, iospec) -> tuple[dict, dict]:
    """Scale/zero-point of quantized model inputs/outputs, and input_layouts carrying their integer dtypes."""
    io_quant, layouts = {}, json.loads(json.dumps(artifact.meta.get("input_layouts") or {}))
    input_names = set(iospec.input_names)
    for d in session.input_details + session.output_details:
        if d.scale is None:
            continue
        io_quant[d.name] = {"scale": d.scale, "zero_point": d.zero_point, "dtype": d.dtype}
        if d.name in input_names:
            spec = iospec.input(d.name)
            entry = layouts.setdefault(d.name, {"perm": None, "layout": spec.layout, "shape": list(d.shape)})
            entry["dtype"] = d.dtype
    return io_quant, layouts


class QuantizeTflite(Stage):
    name = "quantize_tflite"
    # 2: keep_float covers comparisons of float values (bool outputs), e.g. ConSE's threshold, and float ops no
    # longer read their float producers through an int8 QUANTIZE -> DEQUANTIZE round trip
    version = 2
    consumes = ("savedmodel",)
    produces = "tflite"
    needs_calibration = True
    requires = ("tensorflow", "ai_edge_litert", "onnx", "onnxruntime")
    extra = "tflite"

    def config(self, ctx: StageContext) -> dict:
        return quantizer_key(ctx)

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        meta = run_stage_child("pipeline.export.tflite.quantize:quantize_in_child", artifact, ctx,
                               what="TFLiteConverter (int8)", log_name="tflite", env=TFLITE_ENV)
        return ctx.artifact("tflite", component=artifact.component, precision="int8", meta=meta,
                            main_file="model.tflite")


def quantize_in_child(job, progress) -> dict:
    """Child side of quantize_tflite: (SavedModel artifact, ctx) -> int8 model.tflite in ctx.workdir; its meta."""
    artifact, ctx = stage_job(job, progress)
    tf = _import_tf()
    patterns = keep_float_patterns(ctx)
    if ctx.component != "model":  # the SavedModel artifact keeps the ONNX it came from: its node names
        import onnx

        graph_nodes = onnx.load(str(artifact.path("model.onnx"))).graph.node
        patterns = keep_float_in_component(ctx, patterns, [n.name for n in graph_nodes],
                                           [n.op_type for n in graph_nodes])
    if ctx.target.quantization.activations == "dynamic":
        return _quantize_dynamic(tf, artifact, ctx, patterns)
    _check_settings(ctx, patterns)
    calib = ctx.calibration
    nodes, keep_tensors = keep_float_scope(tf, artifact, patterns, calib) if patterns else ([], set())
    with ctx.progress.task(f"calibrate minmax x{len(calib)}", len(calib)) as task:
        buf = _quantize(tf, artifact, _representative(calib, artifact, task), ctx, keep_tensors)
    round_trips = 0
    if keep_tensors:
        buf, round_trips = drop_float_round_trips(buf)
    weight_only = []
    if ctx.release.model.kept_float_weights == "int8":
        buf, weight_only = weight_only_int8_tflite(buf)
    _, facts, session = _write_tflite(buf, ctx, artifact)
    graph = facts.pop("graph")
    floating = float_ops(graph)
    undeclared = [f for f in floating if f["tensor"] not in keep_tensors]
    if undeclared:
        first = undeclared[0]
        raise StageError(f"op {first['op']} ('{first['tensor']}') runs in float in the int8 model "
                         f"({len(undeclared)} such ops); list its ONNX node in quantization.keep_float to allow it")
    io_quant, layouts = _io_quantization(session, artifact, ctx.iospec)
    meta = dict(facts, input_layouts=layouts, io_quantization=io_quant, signature=artifact.meta.get("signature"),
                kept_float_nodes=nodes, kept_float_ops=floating, io_dtype=ctx.target.quantization.io_dtype,
                per_channel=ctx.target.quantization.per_channel, weight_only_int8_tensors=weight_only,
                float_round_trips_removed=round_trips,
                calibration={"method": "minmax", "samples": len(calib)})
    return record_applied(ctx, meta, patterns)


def _quantize_dynamic(tf, artifact: Artifact, ctx: StageContext, patterns: list[str]) -> dict:
    """activations: dynamic -> TFLiteConverter's dynamic-range mode: weights int8 (per output channel), float
    activations quantized per input at run time by LiteRT's hybrid FULLY_CONNECTED/CONV kernels; no calibration."""
    q = ctx.target.quantization
    if patterns:
        raise StageError(f"keep_float entry '{patterns[0]}' with activations: dynamic: TFLiteConverter's "
                         "dynamic-range mode has no per-op exceptions")
    if q.io_dtype != "float32":
        raise StageError(f"target '{ctx.target.name}': activations: dynamic keeps float32 inputs and outputs; "
                         f"io_dtype '{q.io_dtype}' needs static int8")

    def build() -> bytes:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(artifact.main_file))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
        conv._experimental_disable_per_channel = not q.per_channel
        return conv.convert()

    with ctx.progress.task("quantize weights (dynamic activations)", 1) as task:
        buf = _convert(build, "TFLiteConverter (dynamic-range int8)")
        task.advance()
    _, facts, session = _write_tflite(buf, ctx, artifact)
    graph = facts.pop("graph")
    int8_weights = [t["name"] for t in graph["tensors"] if t["const"] and t["dtype"] == "int8"]
    if not int8_weights:
        raise StageError("TFLiteConverter's dynamic-range mode left every weight float (no int8 constant)")
    io_quant, layouts = _io_quantization(session, artifact, ctx.iospec)
    meta = dict(facts, input_layouts=layouts, io_quantization=io_quant, signature=artifact.meta.get("signature"),
                kept_float_nodes=[], kept_float_ops=[], io_dtype=q.io_dtype, per_channel=q.per_channel,
                activations="dynamic", int8_weight_tensors=len(int8_weights),
                calibration={"method": "none (activations quantized at run time)", "samples": 0})
    return record_applied(ctx, meta, patterns)
