"""TFLite branch: ONNX fp32 artifact -> SavedModel (onnx2tf) -> TFLite fp32/fp16, or full-integer int8 per target.

onnx2tf runs in a child process (`python -m pipeline.export.tflite JOB`) with its own working directory: it
writes scratch files into its cwd, fetches sample photos from the internet for image-only models, prints a
banner and calls sys.exit on errors; none of that may reach the build. Its SavedModel signature keeps the ONNX
input/output names. Image inputs come out NHWC (a camera's own layout, and measured faster than keeping NCHW,
which costs a TRANSPOSE op in the graph); the change is declared in meta["input_layouts"] so that verify, the
golden vectors and the manifest feed and describe that layout. GELU's Erf is rebuilt from builtin ops, because
a FlexErf op does not load in the LiteRT interpreter.

tensorflow, onnx2tf, onnx, onnxruntime and the LiteRT interpreter are imported inside the stages only.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from ..artifact import Artifact
from ..errors import StageError
from ..stages import Stage, StageContext
from . import keep_float_in_component, keep_float_patterns, quantizer_key, record_applied, symmetric_int8

# ONNX ops onnx2tf rebuilds from TFLite builtins: plain onnx2tf emits FlexErf, which LiteRT refuses to run.
PSEUDO_OPS = ("Erf",)
ONNX2TF_TIMEOUT_S = 3600
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]
# Ops that only change a tensor's type: they may touch float tensors in a full-integer model (float I/O, masks).
_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE", "CAST"})
_FLOAT_TYPES = frozenset({"float32", "float16", "float64"})
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- ONNX -> SavedModel


class ExportSavedModel(Stage):
    name = "export_savedmodel"
    version = 3
    consumes = ("onnx",)
    produces = "savedmodel"
    requires = ("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnxruntime", "onnx_graphsurgeon", "sng4onnx")
    extra = "tflite"

    def config(self, ctx: StageContext) -> dict:
        return {"pseudo_ops": list(PSEUDO_OPS), "keep_layout": _keep_layout_inputs(ctx.iospec),
                "iospec": ctx.iospec.model_dump(mode="json")}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        # Absolute paths: the child runs inside the scratch directory, and the cache dir may be relative.
        scratch = (ctx.workdir / "onnx2tf_scratch").resolve()
        scratch.mkdir()
        try:
            # onnx2tf rewrites its input file in place (it simplifies the graph): give it a scratch copy, never
            # the cached artifact, or the export_onnx cache entry stops matching its hashes.
            onnx_copy = scratch / artifact.main_file.name
            shutil.copyfile(artifact.main_file, onnx_copy)
            job = _write_job(scratch, onnx_copy, ctx)
            _run_onnx2tf(job, scratch, artifact.main_file.name)
            signature = json.loads((scratch / "signature.json").read_text(encoding="utf-8"))
            shutil.move(str(scratch / "saved_model"), str(ctx.workdir / "saved_model"))
            # fingerprint.pb carries a random id per save; nothing downstream reads it, and without it the
            # SavedModel (hence the lineage recorded in every bundle) is byte-identical across builds.
            (ctx.workdir / "saved_model" / "fingerprint.pb").unlink(missing_ok=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # quantize_tflite finds keep_float's ONNX nodes in the TFLite graph by running this exact ONNX model.
        shutil.copyfile(artifact.main_file, ctx.workdir / "model.onnx")
        meta = {"signature": signature, "input_layouts": input_layouts(signature, ctx.iospec),
                "onnx2tf": {"pseudo_ops": list(PSEUDO_OPS), "keep_layout": _keep_layout_inputs(ctx.iospec)}}
        _check_outputs(signature, ctx.iospec)
        return ctx.artifact("savedmodel", component=artifact.component, precision="fp32", meta=meta,
                            main_file="saved_model")


def _keep_layout_inputs(iospec) -> list[str]:
    """Inputs of rank 3-5 that keep the IOSpec layout: only 4-D images become channel-last.

    A [B, C, T] or [B, T, D] sequence has no natural channel-last reading; transposing it would only move a
    transpose into the firmware.
    """
    return [s.name for s in iospec.inputs
            if 3 <= len(s.shape) <= 5 and not (s.modality == "image" and len(s.shape) == 4)]


def _channel_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _write_job(scratch: Path, onnx_path: Path, ctx: StageContext) -> Path:
    """The child's instructions, plus one real eval sample per input in the layout onnx2tf gives that input.

    onnx2tf checks its own conversion against onnxruntime on these samples (its default is all-ones inputs,
    meaningless for token ids or audio).
    """
    import numpy as np

    sample = ctx.example_inputs()
    keep = _keep_layout_inputs(ctx.iospec)
    samples = []
    for index, spec in enumerate(ctx.iospec.inputs):
        value = sample[spec.name]
        if 3 <= value.ndim <= 5 and spec.name not in keep:
            value = value.transpose(_channel_last(value.ndim))
        path = scratch / f"sample{index}.npy"
        np.save(path, np.ascontiguousarray(value))
        samples.append([spec.name, str(path)])
    job = {"onnx": str(onnx_path), "out": str(scratch / "saved_model"), "signature": str(scratch / "signature.json"),
           "samples": samples, "keep_layout": keep, "pseudo_ops": list(PSEUDO_OPS)}
    path = scratch / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path


def _run_onnx2tf(job: Path, scratch: Path, onnx_name: str) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", __name__, str(job)], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise StageError(f"onnx2tf did not finish {onnx_name} within {ONNX2TF_TIMEOUT_S} s") from err
    if proc.returncode != 0 or not (scratch / "signature.json").is_file():
        raise StageError(f"onnx2tf failed on {onnx_name}: {last_error_line(proc.stdout + proc.stderr)}")


def last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last one naming an error, else the last one."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if re.search(r"error|exception", ln, re.IGNORECASE)]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


def input_layouts(signature: dict, iospec) -> dict:
    """IOSpec inputs whose SavedModel form differs (layout, dtype) -> {"perm", "layout", "shape", "dtype"}."""
    out = {}
    for spec in iospec.inputs:
        got = signature["inputs"].get(spec.name)
        if got is None:
            raise StageError(f"SavedModel has no input '{spec.name}'; its inputs are {sorted(signature['inputs'])}")
        shape, rank = list(got["shape"]), len(spec.shape)
        perm = _channel_last(rank) if 3 <= rank <= 5 else None
        if shape == list(spec.shape):
            perm = None
        elif perm is None or shape != [spec.shape[i] for i in perm]:
            raise StageError(f"input '{spec.name}' comes out of onnx2tf as {shape}, not {list(spec.shape)} "
                             "or its channel-last form")
        if perm is None and got["dtype"] == spec.dtype:
            continue
        layout = spec.layout[0] + spec.layout[2:] + spec.layout[1] if perm and len(spec.layout) == rank else spec.layout
        out[spec.name] = {"perm": perm, "layout": layout, "shape": shape, "dtype": got["dtype"]}
    return out


def _check_outputs(signature: dict, iospec) -> None:
    for spec in iospec.outputs:
        got = signature["outputs"].get(spec.name)
        if got is None:
            raise StageError(f"SavedModel has no output '{spec.name}'; its outputs are {sorted(signature['outputs'])}")
        if list(got["shape"]) != list(spec.shape):
            raise StageError(f"output '{spec.name}' comes out of onnx2tf as {got['shape']}, not {list(spec.shape)}; "
                             "output layouts are not converted back")


def _onnx2tf_main(job_file: str) -> int:
    """Child process: one onnx2tf conversion -> saved_model/ and signature.json (see ExportSavedModel)."""
    import numpy as np
    import requests

    def refuse(*args, **kwargs):
        raise RuntimeError("onnx2tf tried to use the network; edgepipe converts offline")

    requests.Session.request = refuse  # every requests.get/post goes through a Session
    from onnx2tf import onnx2tf as core

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    images = [np.load(path) for _, path in job["samples"]]
    # Called when every input is a 3-channel 4-D tensor; onnx2tf would download 20 MS-COCO crops from GitHub.
    core.download_test_image_data = lambda: next(a for a in images if a.ndim == 4).astype(np.float32)
    model = core.convert(input_onnx_file_path=job["onnx"], output_folder_path="onnx2tf_out", disable_model_save=True,
                         non_verbose=True, custom_input_op_name_np_data_path=job["samples"],
                         keep_ncw_or_nchw_or_ncdhw_input_names=job["keep_layout"] or None,
                         # onnx2tf's CLI lower-cases these names and its ops compare lower case; its API does not
                         replace_to_pseudo_operators=[op.lower() for op in job["pseudo_ops"]])
    _save_with_onnx_names(model, job)
    return 0


def _save_with_onnx_names(model, job: dict) -> None:
    """Keras model -> SavedModel whose serving signature uses the ONNX input/output names, and its signature.json.

    onnx2tf's own signature calls the outputs output_0..N; golden vectors and firmware need the ONNX names.
    """
    import onnx
    import tensorflow as tf
    import tf_keras

    graph = onnx.load(job["onnx"], load_external_data=False).graph
    output_names = [o.name for o in graph.output]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]

    def serve(*inputs):
        result = model(list(inputs))
        return dict(zip(output_names, result if isinstance(result, (list, tuple)) else [result]))

    archive = tf_keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    archive.write_out(job["out"])
    loaded = tf.saved_model.load(job["out"]).signatures["serving_default"]

    def describe(spec) -> dict:
        return {"shape": [-1 if d is None else int(d) for d in spec.shape], "dtype": spec.dtype.name}

    signature = {"inputs": {n: describe(s) for n, s in loaded.structured_input_signature[1].items()},
                 "outputs": {n: describe(s) for n, s in loaded.structured_outputs.items()}}
    Path(job["signature"]).write_text(json.dumps(signature, indent=1, sort_keys=True), encoding="utf-8")


# --------------------------------------------------------------------------- SavedModel -> TFLite


def _import_tf():
    # TF reads this once, at import; its absl lines from before logging starts (oneDNN notice, CUDA probing) ignore
    # it and go straight to fd 2, so the import runs with native output silenced.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _native_output_silenced():
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def _native_output_silenced():
    """Drop what native code prints straight to fd 1/2 (the calibrator's settings line, LiteRT's delegate notice).

    Python's own sys.stdout/sys.stderr are pointed at copies of the original descriptors meanwhile, so progress
    bars and our messages still reach the terminal; failures arrive as Python exceptions and are reported.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    streams = (sys.stdout, sys.stderr)
    with tempfile.TemporaryFile() as sink:
        try:
            sys.stdout = open(saved[1], "w", closefd=False, buffering=1, encoding="utf-8", errors="replace")
            sys.stderr = open(saved[2], "w", closefd=False, buffering=1, encoding="utf-8", errors="replace")
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            sys.stdout, sys.stderr = streams
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def converter_message(err: BaseException) -> str:
    """One line from a TFLiteConverter failure: the Flex ops it needs, else the first MLIR error, else line one."""
    text = str(err)
    flex = re.search(r"TF Select ops: ([^\n]+)", text)
    if flex:
        return f"needs TensorFlow (Flex) ops {flex.group(1).strip()}, which the LiteRT builtin runtime cannot run"
    for line in text.splitlines():
        if "error:" in line:
            message = line.split("error:", 1)[1].rsplit(")): ", 1)[-1].strip()
            if message:
                return message[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _convert(build, what: str) -> bytes:
    """Run `build()` (a converter call) quietly; any failure -> StageError naming `what` and the reason."""
    with warnings.catch_warnings():
        # The calibrator still goes through tf.lite.Interpreter, which warns that it is deprecated.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        try:
            with _native_output_silenced():
                return build()
        except StageError:
            raise
        except Exception as err:
            raise StageError(f"{what} failed: {converter_message(err)}") from err


def inspect_tflite(buf: bytes) -> dict:
    """Ops and tensors of a .tflite flatbuffer, read directly (the interpreter refuses files with Flex ops).

    Returns {"ops": [{"op", "inputs", "outputs"}], "tensors": [{"name", "dtype", "const", "bytes"}], "inputs"}
    for the main graph (tensor indices as the interpreter numbers them).
    """
    from tensorflow.lite.python import schema_py_generated as fb

    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    model = fb.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        size = model.Buffers(t.Buffer()).DataLength()
        tensors.append({"name": t.Name().decode(), "dtype": type_names.get(t.Type(), str(t.Type())),
                        "const": size > 0, "bytes": size})
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = builtin == fb.BuiltinOperator.CUSTOM  # Flex ops are custom ops named "Flex<TF op>"
        name = code.CustomCode().decode() if custom else op_names.get(builtin, str(builtin))
        ops.append({"op": name, "inputs": [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else [],
                    "outputs": [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else []})
    return {"ops": ops, "tensors": tensors,
            "inputs": [int(x) for x in graph.InputsAsNumpy()] if graph.InputsLength() else []}


def model_facts(graph: dict, buf: bytes) -> dict:
    """Op histogram, constants (weights: tensors and bytes per dtype), activation tensors per dtype, file size."""
    hist: dict[str, int] = {}
    for op in graph["ops"]:
        hist[op["op"]] = hist.get(op["op"], 0) + 1
    weights: dict[str, dict] = {}
    activations: dict[str, int] = {}
    produced = {t for op in graph["ops"] for t in op["outputs"]}
    for index, tensor in enumerate(graph["tensors"]):
        if tensor["const"]:
            entry = weights.setdefault(tensor["dtype"], {"tensors": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["bytes"] += tensor["bytes"]
        elif index in produced:
            activations[tensor["dtype"]] = activations.get(tensor["dtype"], 0) + 1
    return {"ops": dict(sorted(hist.items())), "weights_dtypes": dict(sorted(weights.items())),
            "activation_dtypes": dict(sorted(activations.items())), "size_bytes": len(buf)}


def _refuse_flex(hist: dict) -> None:
    # Unreachable while only builtin op sets are enabled; kept so that no route can ship a file LiteRT refuses.
    # (A target's ops.allowed/denied lists are checked by the runner on meta["ops"].)
    flex = sorted(op for op in hist if op.startswith("Flex"))
    if flex:
        raise StageError(f"the TFLite model contains Flex ops {', '.join(flex)}; the LiteRT builtin runtime cannot "
                         "run them")


def _smoke_run(path: Path, artifact: Artifact, ctx: StageContext):
    """Load the file in the runtime the device uses and run one eval sample; returns the session."""
    from targets.agent import open_model

    from ..verify import adapt_sample

    try:
        with _native_output_silenced():  # LiteRT announces its XNNPACK delegate on stderr
            session = open_model(str(path), "tflite", 1)
            session.run(adapt_sample(ctx.example_inputs(), artifact))
    except Exception as err:
        lines = str(err).splitlines() or [type(err).__name__]
        raise StageError(f"the converted model does not run in the LiteRT interpreter: {lines[0][:300]}") from err
    return session


def _write_tflite(buf: bytes, ctx: StageContext, source: Artifact) -> tuple[Path, dict, object]:
    """Write model.tflite (only after conversion succeeded), check its ops and run it once."""
    path = ctx.workdir / "model.tflite"
    path.write_bytes(buf)
    graph = inspect_tflite(buf)
    facts = model_facts(graph, buf)
    _refuse_flex(facts["ops"])
    session = _smoke_run(path, source, ctx)
    facts["inputs"] = [d.as_dict() for d in session.input_details]
    facts["outputs"] = [d.as_dict() for d in session.output_details]
    return path, dict(facts, graph=graph), session


class ConvertTflite(Stage):
    name = "convert_tflite"
    version = 1
    consumes = ("savedmodel",)
    produces = "tflite"
    requires = ("tensorflow", "ai_edge_litert")
    extra = "tflite"

    def config(self, ctx: StageContext) -> dict:
        return {"precision": ctx.target.precision}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        tf = _import_tf()
        precision = ctx.target.precision
        if precision not in ("fp32", "fp16"):
            raise StageError(f"convert_tflite makes fp32 or fp16 models, not {precision} (int8 is quantize_tflite)")

        def build() -> bytes:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(artifact.main_file))
            if precision == "fp16":  # fp16 weights, dequantized to fp32 at load; activations stay fp32
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            return converter.convert()

        buf = _convert(build, f"TFLiteConverter ({precision})")
        _, facts, _ = _write_tflite(buf, ctx, artifact)
        facts.pop("graph")
        meta = dict(facts, input_layouts=artifact.meta.get("input_layouts") or {},
                    signature=artifact.meta.get("signature"))
        return ctx.artifact("tflite", component=artifact.component, precision=precision, meta=meta,
                            main_file="model.tflite")


# --------------------------------------------------------------------------- full-integer int8


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

    from ..verify import adapt_sample

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


def float_ops(graph: dict) -> list[dict]:
    """Ops that compute on float tensors (type conversions excepted): what a full-integer model must not have."""
    out = []
    for op in graph["ops"]:
        if op["op"] in _CONVERSION_OPS:
            continue
        dtypes = {graph["tensors"][t]["dtype"] for t in op["inputs"] + op["outputs"] if t >= 0}
        if dtypes & _FLOAT_TYPES:
            out.append({"op": op["op"], "tensor": graph["tensors"][op["outputs"][0]]["name"] if op["outputs"] else ""})
    return out


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
        record_applied(ctx, meta, patterns)
        return ctx.artifact("tflite", component=artifact.component, precision="int8", meta=meta,
                            main_file="model.tflite")


def _quantize_dynamic(tf, artifact: Artifact, ctx: StageContext, patterns: list[str]) -> Artifact:
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
    record_applied(ctx, meta, patterns)
    return ctx.artifact("tflite", component=artifact.component, precision="int8", meta=meta, main_file="model.tflite")


def _unpack(buf: bytes):
    """What it does: .tflite bytes -> (the flatbuffer schema module, its mutable ModelT, op -> builtin code)."""
    from tensorflow.lite.python import schema_py_generated as fb

    model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(buf, 0))
    codes = model.operatorCodes

    def builtin(op) -> int:
        return max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)

    return fb, model, builtin


def _pack(model, size_hint: int) -> bytes:
    """What it does: a ModelT -> .tflite bytes."""
    import flatbuffers

    builder = flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def drop_float_round_trips(buf: bytes) -> tuple[bytes, int]:
    """What it does: an int8 .tflite -> the same model without QUANTIZE -> DEQUANTIZE round trips between float
    ops (how many were cut). The converter keeps such a pair on the output of an op kept float (e.g. the fixed
    1/256 grid of a SOFTMAX output, ConSE's probabilities), so its float consumers would read int8-rounded
    values; they now read the float tensor itself. A QUANTIZE whose int8 output has other consumers stays."""
    fb, model, builtin = _unpack(buf)
    graph = model.subgraphs[0]
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    outputs = {int(t) for t in graph.outputs}
    rewire, drop = {}, set()
    for op in graph.operators:
        if builtin(op) != fb.BuiltinOperator.DEQUANTIZE:
            continue
        src = producer.get(int(op.inputs[0]))
        if src is None or builtin(src) != fb.BuiltinOperator.QUANTIZE:
            continue
        before = int(src.inputs[0])
        if graph.tensors[before].type != fb.TensorType.FLOAT32 or int(op.outputs[0]) in outputs:
            continue
        rewire[int(op.outputs[0])] = before
        drop.add(id(op))
    if not rewire:
        return buf, 0
    graph.operators = [op for op in graph.operators if id(op) not in drop]
    for op in graph.operators:
        op.inputs = [rewire.get(int(t), int(t)) for t in op.inputs]
    used = {int(t) for op in graph.operators for t in op.inputs} | outputs
    graph.operators = [op for op in graph.operators
                       if not (builtin(op) == fb.BuiltinOperator.QUANTIZE and int(op.outputs[0]) not in used)]
    return _pack(model, len(buf)), len(rewire)


def weight_only_int8_tflite(buf: bytes, min_elements: int = 4096) -> tuple[bytes, list[str]]:
    """What it does: an int8 .tflite -> the same model where every FULLY_CONNECTED that stayed float (keep_float)
    reads its constant float32 weight [N, K] (at least `min_elements`) from an int8 copy through a DEQUANTIZE
    (symmetric_int8, per output row), plus the names of the weights changed. The float32 copy leaves the file;
    the runtime dequantizes the constant once, the FC computes in float as before."""
    from collections import Counter

    import numpy as np

    fb, model, builtin = _unpack(buf)
    graph, codes = model.subgraphs[0], model.operatorCodes
    uses = Counter(int(t) for op in graph.operators for t in op.inputs)
    dequantize = next((i for i, c in enumerate(codes) if max(c.builtinCode, c.deprecatedBuiltinCode) ==
                       fb.BuiltinOperator.DEQUANTIZE and c.version >= 2), None)
    added, changed = [], []
    for op in graph.operators:
        if builtin(op) != fb.BuiltinOperator.FULLY_CONNECTED or len(op.inputs) < 2:
            continue
        index = int(op.inputs[1])
        tensor = graph.tensors[index]
        data = model.buffers[tensor.buffer].data
        if tensor.type != fb.TensorType.FLOAT32 or data is None or len(data) == 0 or uses[index] != 1:
            continue
        w = np.frombuffer(bytes(bytearray(data)), dtype=np.float32).reshape(tensor.shape)
        if w.ndim != 2 or w.size < min_elements:
            continue
        q, scale = symmetric_int8(w, 0)
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        qbuf = fb.BufferT()
        qbuf.data = np.frombuffer(q.tobytes(), dtype=np.uint8)
        model.buffers.append(qbuf)
        params = fb.QuantizationParametersT()
        params.scale, params.zeroPoint, params.quantizedDimension = [float(x) for x in scale], [0] * len(scale), 0
        qtensor = fb.TensorT()
        qtensor.name, qtensor.shape, qtensor.type = f"{name}_int8", list(tensor.shape), fb.TensorType.INT8
        qtensor.buffer, qtensor.quantization = len(model.buffers) - 1, params
        graph.tensors.append(qtensor)
        model.buffers[tensor.buffer].data = None  # the float32 copy leaves the file
        model.buffers.append(fb.BufferT())
        tensor.buffer = len(model.buffers) - 1  # now computed, once, by the DEQUANTIZE
        if dequantize is None:
            code = fb.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.DEQUANTIZE
            code.version = 2  # int8 input
            codes.append(code)
            dequantize = len(codes) - 1
        deq = fb.OperatorT()
        deq.opcodeIndex, deq.inputs, deq.outputs = dequantize, [len(graph.tensors) - 1], [index]
        added.append(deq)
        changed.append(name)
    if not changed:
        return buf, []
    graph.operators = added + graph.operators  # constant inputs only: first in execution order
    return _pack(model, len(buf)), changed


# --------------------------------------------------------------------------- keep_float: ONNX nodes -> TFLite ops


def keep_float_scope(tf, artifact: Artifact, patterns: list[str], calib) -> tuple[list[str], set[str]]:
    """keep_float entries (ONNX node-name prefixes or op types) -> (ONNX node names, TFLite tensors kept float).

    onnx2tf keeps no ONNX node names, so the nodes are found in the float TFLite graph by value: one calibration
    sample runs through the ONNX model (onnxruntime) and the float .tflite, and every ONNX value is matched to the
    TFLite tensors that hold the same numbers in any layout. A node's ops are those between the TFLite tensors
    matching its output and the matched tensors feeding them.
    """
    import onnx

    from ..verify import adapt_sample

    model = onnx.load(str(artifact.path("model.onnx")))
    nodes = _keep_float_nodes(model, patterns)
    sample = next(iter(calib))
    float_buf = _convert(lambda: tf.lite.TFLiteConverter.from_saved_model(str(artifact.main_file)).convert(),
                         "TFLiteConverter (float model for keep_float)")
    graph = inspect_tflite(float_buf)
    values = _tflite_values(float_buf, graph, adapt_sample(sample, artifact), artifact.meta["signature"]["inputs"])
    matches = _match_values(_onnx_values(model, sample), values)
    ops: set[int] = set()
    for node in nodes:
        ops |= _node_ops(node, model, matches, graph)
    tensors = {graph["tensors"][t]["name"] for op in ops for t in graph["ops"][op]["outputs"]}
    return [n.name for n in nodes], tensors


def _keep_float_nodes(model, patterns: list[str]) -> list:
    """ONNX nodes whose name starts with an entry or whose op type equals it; an entry matching nothing is an error."""
    found = []
    for pattern in patterns:
        hits = [n for n in model.graph.node if n.name.startswith(pattern) or n.op_type == pattern]
        if not hits:
            raise StageError(f"quantization.keep_float entry '{pattern}' matches no node name or op type")
        found.extend(n for n in hits if n not in found)
    return found


def _onnx_values(model, sample: dict) -> dict:
    """Every float tensor the ONNX graph computes on `sample` (onnxruntime, all intermediates as outputs)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    typed = onnx.shape_inference.infer_shapes(probe).graph.value_info
    floats = {vi.name for vi in typed if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    present = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name in floats and name not in present:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                present.add(name)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: v for n, v in zip(names, session.run(names, sample)) if v.dtype == np.float32}


def _tflite_values(buf: bytes, graph: dict, feeds: dict, signature_inputs: dict) -> dict:
    """Every float tensor an op of the float .tflite produces on `feeds` -> {tensor index: array}."""
    import numpy as np

    from targets.agent import _import_tflite

    interpreter_cls, _, _ = _import_tflite()
    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": this is debugging, of a kind
        warnings.simplefilter("ignore")
        interp = interpreter_cls(model_content=buf, experimental_preserve_all_tensors=True, num_threads=1)
    interp.allocate_tensors()
    runner_inputs = interp.get_signature_runner().get_input_details()
    for name, detail in runner_inputs.items():
        interp.set_tensor(detail["index"], np.ascontiguousarray(feeds[name], dtype=signature_inputs[name]["dtype"]))
    interp.invoke()
    out = {}
    for op in graph["ops"]:
        for t in op["outputs"]:
            if graph["tensors"][t]["dtype"] == "float32":
                out[t] = np.array(interp.get_tensor(t))
    return out


def _match_values(onnx_values: dict, tflite_values: dict) -> dict[str, list[int]]:
    """ONNX tensor name -> TFLite tensor indices holding the same numbers (sorted values compared, so layout and
    reshapes do not matter). Constant tensors are skipped: their values say nothing about where they came from."""
    import numpy as np

    def key(value):
        flat = np.sort(value.astype(np.float64).ravel())
        return flat, float(np.abs(flat).max()) if flat.size else 0.0

    by_size: dict[int, list] = {}
    for index, value in sorted(tflite_values.items()):
        if value.size and np.ptp(value) > 0:
            by_size.setdefault(value.size, []).append((index, *key(value)))
    matches: dict[str, list[int]] = {}
    for name, value in onnx_values.items():
        if not value.size or np.ptp(value) == 0:
            continue
        flat, scale = key(value)
        tol = 1e-4 * max(scale, 1e-12)
        hits = [index for index, other, _ in by_size.get(value.size, ())
                if abs(other[0] - flat[0]) <= tol and abs(other[-1] - flat[-1]) <= tol
                and np.allclose(other, flat, rtol=1e-3, atol=tol)]
        if hits:
            matches[name] = hits
    return matches


def _compares_floats(graph: dict, op_index: int) -> bool:
    """What it does: a TFLite op -> whether it takes a computed (non-constant) float32 tensor."""
    return any(t >= 0 and graph["tensors"][t]["dtype"] == "float32" and not graph["tensors"][t]["const"]
               for t in graph["ops"][op_index]["inputs"])


def _node_ops(node, model, matches: dict, graph: dict, depth: int = 0) -> set[int]:
    """TFLite op indices that compute ONNX `node`: walk back from the first tensor holding its output to tensors
    that hold other ONNX values. A node whose output exists nowhere (fused into its consumer, like a Conv into
    the CONV_2D that also applies the Relu) takes its consumers' ops."""
    outputs = [o for o in node.output if o in matches]
    if not outputs:
        consumers = [n for n in model.graph.node if set(n.input) & set(node.output)]
        if not consumers or depth > 8:
            raise StageError(f"keep_float node '{node.name}' has no counterpart in the TFLite graph")
        return set().union(*(_node_ops(c, model, matches, graph, depth + 1) for c in consumers))
    producer = {t: i for i, op in enumerate(graph["ops"]) for t in op["outputs"]}
    own = {t for o in outputs for t in matches[o]}
    elsewhere = {t for hits in matches.values() for t in hits} - own
    graph_inputs = set(graph["inputs"])
    takes_graph_input = bool(set(node.input) & {i.name for i in model.graph.input})
    ops: set[int] = {producer[t] for t in own}  # layout copies of the value (RESHAPE, TRANSPOSE) go with it
    stack = [min(producer[t] for t in matches[o]) for o in outputs]  # the first op computing each value
    while stack:
        index = stack.pop()
        ops.add(index)
        for t in graph["ops"][index]["inputs"]:
            tensor = graph["tensors"][t] if t >= 0 else None
            if tensor is not None and tensor["dtype"] == "bool" and t in producer and producer[t] not in ops \
                    and _compares_floats(graph, producer[t]):
                # A bool computed from float values (ConSE's "p >= T-th largest") is part of the node: in an int8
                # model the comparison and what feeds it would otherwise compare quantized values.
                stack.append(producer[t])
                continue
            # Integer and bool tensors (token ids, masks) are never quantized: they bound a node like a matched value.
            if tensor is None or tensor["const"] or tensor["dtype"] != "float32" or t in elsewhere \
                    or producer.get(t) in ops:
                continue
            if t in graph_inputs:
                if not takes_graph_input:
                    raise StageError(f"keep_float node '{node.name}' could not be delimited in the TFLite graph")
                continue
            stack.append(producer[t])
    return ops


if __name__ == "__main__":
    sys.exit(_onnx2tf_main(sys.argv[1]))
