"""OpenVINO branch: ONNX fp32 artifact -> OpenVINO IR (fp32, or fp16-compressed weights) -> NNCF int8 IR per target.

openvino and nncf are imported inside toolchain child processes only (pipeline/export/child.py), whose environment
turns their telemetry off (OPENVINO_ENV). Both precision defaults are set on purpose and recorded:
`openvino.save_model` would silently store fp16 weights, and the runtime side (targets/agent.py) pins the CPU
plugin's inference precision to f32.
"""
from __future__ import annotations


from ..artifact import Artifact
from ..errors import StageError
from ..stages import Stage, StageContext
from . import keep_float_in_component, keep_float_patterns, quantizer_key, record_applied
from .child import run_stage_child, stage_job

# Ops that are graph plumbing, not computation: never candidates for keep_float matching by name prefix.
_STRUCTURAL_OPS = ("Parameter", "Result", "Constant")


# The OpenVINO children's environment only: OpenVINO's and NNCF's usage telemetry would otherwise send events (no
# consent file under ~/intel, which we must not write, counts as consent). openvino_telemetry declines when CI=true
# (its OptInChecker._run_in_ci), NNCF swaps in a stub when NNCF_CI is set (nncf.definitions.NNCF_CI_ENV_VAR_NAME,
# "must be set in CI environments"); both decide once per process, at first use.
OPENVINO_ENV = {"CI": "true", "NNCF_CI": "1"}


def int8_constants(model) -> int:
    """Number of i8/u8 constants: after save_model, NNCF's weight FakeQuantizes are stored as int8 weights."""
    return sum(1 for op in model.get_ordered_ops()
               if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i8", "u8"))


def op_histogram(model) -> dict[str, int]:
    """Op type name -> count over an ov.Model (Parameter/Result/Constant included: an IR is all ops)."""
    hist: dict[str, int] = {}
    for op in model.get_ordered_ops():
        hist[op.get_type_name()] = hist.get(op.get_type_name(), 0) + 1
    return dict(sorted(hist.items()))


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith("Exception from")]
    return f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _save(ov, model, path, compress_to_fp16: bool):
    """Write model.xml + model.bin; returns the IR as read back, since saving changes it (weight compression)."""
    try:
        ov.save_model(model, str(path), compress_to_fp16=compress_to_fp16)
        return ov.Core().read_model(str(path))
    except Exception as err:
        raise StageError(f"openvino.save_model failed: {_one_line(err)}") from err


class ConvertOpenvino(Stage):
    name = "convert_openvino"
    version = 1
    consumes = ("onnx",)
    produces = "openvino"
    requires = ("openvino",)
    extra = "openvino"

    def config(self, ctx: StageContext) -> dict:
        # Only this changes the IR, so the fp32 IR is one cache entry shared by the fp32 and int8 targets.
        return {"compress_to_fp16": _wants_fp16(ctx)}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        compress = _wants_fp16(ctx)
        meta = run_stage_child("pipeline.export.openvino:convert_in_child", artifact, ctx, what="openvino.convert_model",
                               log_name="openvino", env=OPENVINO_ENV)
        return ctx.artifact("openvino", component=artifact.component, precision="fp16" if compress else "fp32",
                            meta=meta, main_file="model.xml")


def convert_in_child(job, progress) -> dict:
    """Child side of convert_openvino: (ONNX artifact, ctx) -> model.xml/.bin in ctx.workdir; returns its meta."""
    import openvino as ov

    artifact, ctx = stage_job(job, progress)
    compress = _wants_fp16(ctx)
    try:
        model = ov.convert_model(str(artifact.main_file))
    except Exception as err:
        raise StageError(f"openvino.convert_model failed on {artifact.main_file.name}: {_one_line(err)}") from err
    _check_io(model, ctx)
    saved = _save(ov, model, ctx.workdir / "model.xml", compress)
    return {"ops": op_histogram(saved), "nodes": len(saved.get_ordered_ops()), "compress_to_fp16": compress,
            "weights": "fp16" if compress else "fp32"}


def _wants_fp16(ctx: StageContext) -> bool:
    return ctx.target is not None and ctx.target.precision == "fp16"


def _check_io(model, ctx: StageContext) -> None:
    """The IR must take the IOSpec's inputs (names, dtypes) and give its outputs: golden vectors and firmware rely
    on those names, and NNCF's calibration feeds are keyed by them."""
    import numpy as np

    got = {}
    for port in model.inputs:
        name = next((n for n in ctx.iospec.input_names if n in port.get_names()), port.get_any_name())
        got[name] = np.dtype(port.get_element_type().to_dtype()).name
    want = {s.name: s.dtype for s in ctx.iospec.inputs}
    if got != want:
        raise StageError(f"OpenVINO model inputs {got} do not match the IOSpec inputs {want}")
    outputs = set().union(*(port.get_names() for port in model.outputs))
    missing = [n for n in ctx.iospec.output_names if n not in outputs]
    if missing:
        raise StageError(f"OpenVINO model has no output '{missing[0]}'; its outputs are "
                         f"{[p.get_any_name() for p in model.outputs]}")


def _keep_float_scope(model, patterns: list[str]) -> tuple[list[str], list[str], list[str]]:
    """keep_float entries -> (exact op names, op types, every op name kept float); unmatched entries are errors.

    An entry is an op type when some op has that type, else a prefix of op names. OpenVINO op names come from
    the ONNX node names, sometimes with a suffix (a Gemm becomes MatMul '<name>/WithoutBiases' + Add '<name>'),
    so prefixes written for the ONNX target usually work here too.
    """
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in _STRUCTURAL_OPS]
    names, types, kept = [], [], []
    for pattern in patterns:
        by_type = [op.get_friendly_name() for op in ops if op.get_type_name() == pattern]
        by_name = [op.get_friendly_name() for op in ops if op.get_friendly_name().startswith(pattern)]
        if by_type:
            types.append(pattern)
        elif by_name:
            names.extend(by_name)
        else:
            raise StageError(f"keep_float entry '{pattern}' (model.keep_float or the target's quantization.keep_float) "
                             "matches no OpenVINO op name or op type")
        kept.extend(by_type or by_name)
    return sorted(set(names)), sorted(set(types)), sorted(set(kept))


# OpenVINO CPU plugin (seen with 2026.4.1) bug, found on low-rank factorized Linear layers: its Snippets pass
# TokenizeMLPSeqSnippets fuses a static rank<=2 chain MatMul(const weights) -> [elementwise/FakeQuantize]* ->
# MatMul(const weights) -> ... into one "Subgraph" kernel, and that kernel computes garbage (1e5..1e30, constant
# logits) when the first MatMul has per-channel int8 weights and no bias: LPT folds its per-channel dequantization
# scale into the next FakeQuantize (per-channel input ranges, per-tensor output ranges), which the Subgraph
# mishandles. The IR itself is right: the same IR run with SNIPPETS_MODE=DISABLE, with an extra output inside the
# chain, or emulated in numpy matches the fp32 IR. A bias Add after the MatMul, per-tensor weights or a float
# first MatMul are all computed correctly, so those MatMuls are kept float (NNCF ignored scope). That cures the
# IR itself, for every consumer: IR runtime_options cannot switch Snippets off (the CPU plugin ignores it there).
# Ops the tokenizer may put between two MatMuls of one chain (elementwise, FakeQuantize, Convert, Softmax).
_MLP_CHAIN_OPS = frozenset((
    "Abs", "Add", "Clamp", "Convert", "Divide", "Elu", "Erf", "Exp", "FakeQuantize", "Floor", "Gelu", "HSigmoid",
    "HSwish", "Maximum", "Minimum", "Mish", "Multiply", "Negative", "Power", "PRelu", "Relu", "Round", "Sigmoid",
    "Softmax", "SoftPlus", "Sqrt", "SquaredDifference", "Subtract", "Swish", "Tanh"))


def _from_constant(node, port: int) -> bool:
    """Input `port` of `node` is a Constant, possibly through Converts (fp16-compressed weights)."""
    src = node.input_value(port).get_node()
    while src.get_type_name() == "Convert":
        src = src.input_value(0).get_node()
    return src.get_type_name() == "Constant"


def _consumers(node) -> list:
    return [t.get_node() for t in node.output(0).get_target_inputs()]


def _is_weight_matmul(node) -> bool:
    """A MatMul the MLP-sequence tokenizer takes: constant weights, no transposed A, static rank <= 2 inputs."""
    if node.get_type_name() != "MatMul" or node.get_attributes().get("transpose_a") or not _from_constant(node, 1):
        return False
    shapes = [node.get_input_partial_shape(i) for i in (0, 1)]
    return all(s.rank.is_static and s.rank.get_length() <= 2 for s in shapes)


def snippets_mlp_hazards(model) -> list[str]:
    """What it does: an fp32 ov.Model -> the names of the MatMuls that int8 would put at risk of the CPU Snippets
    MLP-sequence bug above: a bias-less MatMul with constant weights whose single-consumer chain of elementwise
    ops reaches another such MatMul (a low-rank factorized Linear's first half is exactly that)."""
    hazards = []
    for op in model.get_ordered_ops():
        if not _is_weight_matmul(op):
            continue
        nxt = _consumers(op)
        biased = nxt and nxt[0].get_type_name() == "Add" and any(_from_constant(nxt[0], i) for i in (0, 1))
        if len(nxt) != 1 or biased:
            continue  # several consumers: not one chain; a bias Add: computed correctly
        node = nxt[0]
        while not _is_weight_matmul(node):
            following = _consumers(node)
            if node.get_type_name() not in _MLP_CHAIN_OPS or len(following) != 1:
                break
            node = following[0]
        else:
            hazards.append(op.get_friendly_name())
    return hazards


class _Feeds:
    """The calibration set as NNCF data: batch-1 {ov input name: array} dicts, advancing our own progress bar."""

    def __init__(self, calib, names: dict[str, str], task):
        self._calib, self._names, self._task = calib, names, task

    def __len__(self) -> int:
        return len(self._calib)

    def __iter__(self):
        for sample in self._calib:
            self._task.advance()
            yield {self._names[k]: v for k, v in sample.items()}


def _input_names(model, ctx: StageContext) -> dict[str, str]:
    """IOSpec input name -> the ov.Model input tensor name NNCF's inference request is fed by."""
    out = {}
    for spec in ctx.iospec.inputs:
        port = next((p for p in model.inputs if spec.name in p.get_names()), None)
        if port is None:
            raise StageError(f"OpenVINO model has no input '{spec.name}'; its inputs are "
                             f"{[p.get_any_name() for p in model.inputs]}")
        out[spec.name] = port.get_any_name()
    return out


# QuantizationConfig fields that belong to the ONNX/TFLite quantizers. NNCF decides these itself (its preset
# picks activation symmetry, the plugin picks u8/i8 per tensor), so a profile that sets one explicitly to a value
# NNCF would not use is refused rather than silently ignored.
_NNCF_FIXED = {"symmetric_weights": True, "weight_type": "int8", "io_dtype": "float32", "op_types": None,
               "activations": "static", "blockwise": []}
_NNCF_UNUSED = ("activation_type",)


def _check_supported(q, c) -> None:
    for key in sorted(q.model_fields_set):
        value = getattr(q, key)
        if key in _NNCF_UNUSED or (key in _NNCF_FIXED and value != _NNCF_FIXED[key]):
            raise StageError(f"quantization.{key}={value!r} is not used by NNCF; remove it from the target profile")
        if key == "symmetric_activations" and value != (q.preset == "performance"):
            raise StageError(f"quantization.symmetric_activations={value} contradicts preset '{q.preset}' "
                             "(performance = symmetric, mixed = asymmetric activations); set the preset instead")
    if c.method not in ("minmax", "toolchain_default"):
        raise StageError(f"calibration.method '{c.method}' is not available with NNCF here; use 'minmax'")


def _nncf_settings(nncf, q, samples: int) -> tuple[dict, dict]:
    """Target settings -> (nncf.quantize keyword arguments, the same settings as plain JSON for the manifest)."""
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    fields = getattr(AdvancedQuantizationParameters, "__dataclass_fields__", {})
    if q.bias_correction == "none" and "disable_bias_correction" not in fields:
        raise StageError(f"quantization.bias_correction 'none' is not supported by nncf {nncf.__version__}; "
                         "use 'fast' or 'full'")
    # calibration.method minmax means the global min/max over all samples, as in the ONNX branch. NNCF's own
    # default averages per-sample minima/maxima, which clips rare large activations: on the tiny model (log-mel
    # kept float) that gave agreement 0.978 and a worst-sample logit cosine of 0.74, against 0.998 and 0.997.
    advanced = AdvancedQuantizationParameters(
        disable_bias_correction=q.bias_correction == "none",
        overflow_fix={"first_layer": OverflowFix.FIRST_LAYER, "enable": OverflowFix.ENABLE,
                      "disable": OverflowFix.DISABLE}[q.overflow_fix],
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        weights_quantization_params=QuantizationParameters(per_channel=q.per_channel))
    kwargs = {"preset": {"performance": nncf.QuantizationPreset.PERFORMANCE,
                         "mixed": nncf.QuantizationPreset.MIXED}[q.preset],
              "model_type": nncf.ModelType.TRANSFORMER if q.model_type == "transformer" else None,
              "subset_size": samples, "target_device": nncf.TargetDevice.ANY,
              "fast_bias_correction": q.bias_correction != "full", "advanced_parameters": advanced}
    record = {"preset": q.preset, "model_type": q.model_type, "bias_correction": q.bias_correction,
              "fast_bias_correction": kwargs["fast_bias_correction"], "subset_size": samples,
              "target_device": "ANY", "per_channel_weights": q.per_channel, "overflow_fix": q.overflow_fix,
              "activations_range": "global min/max (RangeEstimatorParametersSet.MINMAX)"}
    return kwargs, record


class QuantizeOpenvino(Stage):
    name = "quantize_openvino"
    version = 2  # 2: bias-less MatMuls chained into another MatMul stay float (snippets_mlp_hazards)
    consumes = ("openvino",)
    produces = "openvino"
    needs_calibration = True
    requires = ("openvino", "nncf")
    extra = "openvino"

    def config(self, ctx: StageContext) -> dict:
        return quantizer_key(ctx)

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        q = ctx.target.quantization
        _check_supported(q, ctx.target.calibration)
        if q.overflow_fix == "auto":  # the runner resolves it from the device (pipeline/device_settings.py)
            raise StageError(f"target '{ctx.target.name}': quantization.overflow_fix 'auto' reached NNCF unresolved")
        # NNCF logs INFO lines and draws progress bars on stdout: in the child they go to its log file.
        meta = run_stage_child("pipeline.export.openvino:quantize_in_child", artifact, ctx, what="nncf",
                               log_name="nncf", env=OPENVINO_ENV)
        return ctx.artifact("openvino", component=artifact.component, precision="int8", meta=meta,
                            main_file="model.xml")


def quantize_in_child(job, progress) -> dict:
    """Child side of quantize_openvino: (fp32 IR artifact, ctx) -> int8 model.xml/.bin in ctx.workdir; its meta."""
    import nncf
    import openvino as ov

    artifact, ctx = stage_job(job, progress)
    q, calib = ctx.target.quantization, ctx.calibration
    model = ov.Core().read_model(str(artifact.main_file))
    patterns = keep_float_in_component(ctx, keep_float_patterns(ctx),
                                       [op.get_friendly_name() for op in model.get_ordered_ops()],
                                       [op.get_type_name() for op in model.get_ordered_ops()])
    names, types, kept = _keep_float_scope(model, patterns)
    # Not model.keep_float: a runtime workaround, recorded on its own (and in kept_float_nodes, as they are float).
    hazards = [n for n in snippets_mlp_hazards(model) if n not in names and "MatMul" not in types]
    if hazards:
        names, kept = sorted(set(names) | set(hazards)), sorted(set(kept) | set(hazards))
    if ctx.target.calibration.method == "toolchain_default":
        # Baseline for benchmarks: nncf.quantize exactly as a user calls it without settings.
        kwargs, record = {"subset_size": len(calib)}, {"nncf_defaults": True, "subset_size": len(calib)}
    else:
        kwargs, record = _nncf_settings(nncf, q, len(calib))
    if names or types:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, types=types)
    feeds = _input_names(model, ctx)
    try:
        with ctx.progress.task(f"calibrate nncf x{len(calib)}", len(calib)) as task:
            qmodel = nncf.quantize(model, nncf.Dataset(_Feeds(calib, feeds, task)), **kwargs)
    except Exception as err:
        raise StageError(f"nncf.quantize failed: {_one_line(err)}") from err
    weight_only = None
    if ctx.release.model.kept_float_weights == "int8":
        # weight-only int8 for what stayed float; the Snippets-hazard MatMuls keep float weights (their bug
        # is about int8 weights in a MatMul chain, so they are left exactly as they are)
        try:
            qmodel = nncf.compress_weights(qmodel, mode=nncf.CompressWeightsMode.INT8_SYM,
                                           ignored_scope=nncf.IgnoredScope(names=hazards, validate=False))
        except Exception as err:
            raise StageError(f"nncf.compress_weights failed: {_one_line(err)}") from err
        weight_only = "nncf.compress_weights INT8_SYM (per output channel) on the layers kept float"
    # int8 weights are already small; fp16 compression would only touch the float parts kept by keep_float.
    saved = _save(ov, qmodel, ctx.workdir / "model.xml", compress_to_fp16=False)
    ops = op_histogram(saved)
    meta = {"ops": ops, "nodes": len(saved.get_ordered_ops()), "compress_to_fp16": False,
            "kept_float_nodes": kept, "ignored_scope": {"names": names, "types": types},
            "runtime_workaround_float_nodes": hazards, "kept_float_weights": weight_only or "float32",
            "nncf": record, "int8_weight_constants": int8_constants(saved),
            "quantized_weights": int8_constants(saved) > 0,
            "calibration": {"method": ctx.target.calibration.method, "tool": "nncf", "samples": len(calib)}}
    return record_applied(ctx, meta, patterns)
