"""On-device agent: loads one model (onnx | openvino | tflite), checks golden vectors, times runs -> one JSON line.

This file is copied ALONE to a device, so it uses only the standard library, numpy and the runtime it loads
(imported lazily inside functions); it must never import `pipeline` or `targets`. It runs on Python >= 3.8.
It is over ~400 lines on purpose (DESIGN §5): one pushable file, split into the marked sections below.
The host imports the same API for its verify stage:

    open_model(path, fmt, threads) -> Session      .run(feeds) -> outputs, .input_details, .runtime_config, ...
    load_golden(dir) -> Golden                     check_golden(session, golden) -> report dict
    write_golden(dir, samples, outputs, atol, rtol)

Golden vectors (a directory): `golden.json` = {"count", "inputs", "outputs", "atol", "rtol"} plus, for k in
0..count-1, `{k:03d}/input.<name>.npy` and `{k:03d}/output.<name>.npy`.

Sections, in order (each marked by a "# ====" banner; tests/test_agent.py follows the same order):
    core                      AgentError, TensorDetail, the Session base class (feed checks, output aliases)
    runtime session: onnx     OnnxSession (onnxruntime)
    runtime session: openvino OpenvinoSession (OpenVINO CPU plugin)
    runtime session: tflite   TfliteSession (LiteRT interpreter, then tflite_runtime, then tensorflow.lite)
    SESSIONS                  format name -> session class; open_model
    golden vectors, measurements, CLI
A new runtime is one more session section and one SESSIONS entry, named as the format's record in the build
side's registry (pipeline/formats.py: its agent_session); this file never imports that registry.

CLI: python agent.py --model PATH --format onnx|openvino|tflite --threads N --warmup W --iterations N
     --golden DIR [--timing-sample K] [--op-profile RUNS] [--eval-inputs X.npz --eval-outputs Y.npz]
stdout gets exactly one JSON line; exit 0 = ok, 1 = error ({"ok": false, "error": "<one line>"}),
3 = ran fine but some golden vectors failed (the JSON still says ok true; the host decides).
Latency percentiles use numpy.percentile with its default linear interpolation; std is the population std.
With EDGEPIPE_INSN_MARKERS=1 in its environment (the qemu transport sets it) the agent brackets every timed run
with marker syscalls that an emulator's instruction-count plugin sees (see time_runs).
"""
from __future__ import annotations

import argparse
import array
import gc
import importlib
import json
import os
import platform
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Tensor names become file names in golden dirs, so keep them to a portable set (":" for TF-style names).
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_.:-]+")  # fullmatch: `$` also matches before a final newline
_QUANTIZED_IO = ("int8", "uint8", "int16")


# ================================================================ core


class AgentError(Exception):
    """A failure with a one-line message (missing runtime, unreadable model, feed mismatch, bad golden dir)."""


@dataclass(frozen=True)
class TensorDetail:
    """One model input or output. shape uses -1 for a dynamic dim (None when even the rank is unknown)."""

    name: str
    shape: tuple | None
    dtype: str
    scale: float | None = None  # set only for quantized (int8/uint8/int16) TFLite tensors
    zero_point: int | None = None

    def as_dict(self) -> dict:
        out = {"name": self.name, "shape": None if self.shape is None else list(self.shape), "dtype": self.dtype}
        if self.scale is not None:
            out.update(scale=self.scale, zero_point=self.zero_point)
        return out


def _one_line(exc: BaseException, limit: int = 400) -> str:
    # Runtimes raise multi-line messages with C++ source locations ("Exception from src/..."): keep the rest.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("Exception from ")]
    text = " ".join(lines) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def _shape_fits(expected, got) -> bool:
    if expected is None:
        return True
    return len(expected) == len(got) and all(e < 0 or e == g for e, g in zip(expected, got))


_NP_DTYPES: dict = {}


def _dtype_is(arr: np.ndarray, name: str) -> bool:
    """arr.dtype is the dtype called `name`. Not `arr.dtype.name == name`: numpy 2 builds that name in Python code
    on every call (~20 k instructions, and not the same number every run), which is most of a tiny model's run."""
    want = _NP_DTYPES.get(name)
    if want is None:
        try:
            want = _NP_DTYPES[name] = np.dtype(name)
        except TypeError:  # a runtime type numpy cannot express (e.g. OpenVINO's): compare by name
            return arr.dtype.name == name
    return arr.dtype == want


def _import_runtime(module: str, fmt: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AgentError(f"runtime '{module}' for format '{fmt}' is not installed here ({_one_line(exc)})") from exc


class Session:
    """A loaded model. Subclasses fill the details and implement `_run`; `run` validates feeds first."""

    runtime_name = ""

    def __init__(self) -> None:
        self.runtime_version = "unknown"
        self.runtime_config: dict = {}
        self.input_details: list[TensorDetail] = []
        self.output_details: list[TensorDetail] = []
        self._output_aliases: dict[str, str] = {}

    @property
    def input_names(self) -> list[str]:
        return [d.name for d in self.input_details]

    @property
    def output_names(self) -> list[str]:
        return [d.name for d in self.output_details]

    def run(self, feeds: dict) -> dict:
        """Run once; feeds map input name -> array. Returns output name -> array (float32 for dequantized)."""
        return self._run(self._prepare(feeds))

    def map_outputs(self, names: list[str]) -> dict[str, str]:
        """Map requested output names (e.g. from golden vectors) to this session's output names."""
        mapping = {}
        for name in names:
            resolved = name if name in self.output_names else self._output_aliases.get(name)
            if resolved is None:
                raise AgentError(f"output '{name}' is not produced by the model; model outputs are {self.output_names}")
            mapping[name] = resolved
        return mapping

    def _prepare(self, feeds: dict) -> dict:
        # ONNX and OpenVINO take exactly what was exported: names, dtypes and shapes must match, no casts.
        unknown = [n for n in feeds if n not in self.input_names]
        if unknown:
            raise AgentError(f"feed '{unknown[0]}' is not a model input; model inputs are {self.input_names}")
        prepared = {}
        for det in self.input_details:
            if det.name not in feeds:
                raise AgentError(f"input '{det.name}': missing feed (expected {_fmt_shape(det.shape)} {det.dtype})")
            arr = np.asarray(feeds[det.name])
            if not _dtype_is(arr, det.dtype) or not _shape_fits(det.shape, arr.shape):
                raise AgentError(
                    f"input '{det.name}': expected {_fmt_shape(det.shape)} {det.dtype}, "
                    f"got {_fmt_shape(arr.shape)} {arr.dtype.name}"
                )
            prepared[det.name] = arr
        return prepared

    def _run(self, feeds: dict) -> dict:
        raise NotImplementedError

    def op_profile(self, feeds: dict, runs: int) -> dict:
        """Per-op times of `runs` runs on `feeds` from the runtime's own profiler -> {"source", "runs", "total_ms",
        "ops", "top": [{"name", "type", "ms", "share"}]} (ms per run), or {"available": False, "reason"}."""
        return {"available": False, "reason": f"{self.runtime_name} has no per-op profiler here"}


def summarize_ops(per_op: dict, runs: int, source: str, top: int = 15) -> dict:
    """(name -> (type, total microseconds over `runs`)) -> the op_profile record: the `top` slowest ops per run."""
    total_us = sum(us for _, us in per_op.values())
    ranked = sorted(per_op.items(), key=lambda kv: (-kv[1][1], kv[0]))
    rows = [{"name": name, "type": kind, "ms": round(us / runs / 1000.0, 6),
             "share": round(us / total_us, 6) if total_us else 0.0} for name, (kind, us) in ranked[:top]]
    return {"available": True, "source": source, "runs": runs, "ops": len(per_op),
            "total_ms": round(total_us / runs / 1000.0, 6), "top": rows}


# ================================================================ runtime session: onnx (onnxruntime)


_ORT_DTYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}


class OnnxSession(Session):
    """onnxruntime on CPUExecutionProvider, intra-op threads as asked, one inter-op thread, sequential."""

    runtime_name = "onnxruntime"

    def __init__(self, path: str, threads: int, options: dict | None = None) -> None:
        super().__init__()
        ort = _import_runtime("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # warnings would go to stderr anyway; keep the device log readable
        for key, value in sorted((options or {}).items()):  # session config entries (e.g. session.x64quantprecision)
            try:
                opts.add_session_config_entry(key, str(value))
            except Exception as exc:
                raise AgentError(f"onnxruntime refused session option {key}={value}: {_one_line(exc)}") from exc
        self._opened = (path, threads, dict(options or {}))
        try:
            self._sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise AgentError(f"cannot load onnx model {path}: {_one_line(exc)}") from exc
        self.runtime_version = ort.__version__
        self.runtime_config = {
            "providers": list(self._sess.get_providers()),
            "intra_op_num_threads": threads,
            "inter_op_num_threads": 1,
            "execution_mode": "sequential",
            "graph_optimization_level": str(opts.graph_optimization_level).rsplit(".", 1)[-1],
        }
        if options:
            self.runtime_config["session_config"] = {k: str(v) for k, v in sorted(options.items())}
        self.input_details = [self._detail(i) for i in self._sess.get_inputs()]
        self.output_details = [self._detail(o) for o in self._sess.get_outputs()]

    @staticmethod
    def _detail(arg) -> TensorDetail:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorDetail(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))

    def _run(self, feeds: dict) -> dict:
        values = self._sess.run(None, feeds)
        return dict(zip(self.output_names, values))

    def op_profile(self, feeds: dict, runs: int) -> dict:
        """onnxruntime's profiler: a second session with profiling on; its JSON trace's node kernel times."""
        import tempfile

        ort = _import_runtime("onnxruntime", "onnx")
        path, threads, options = self._opened
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        for key, value in sorted(options.items()):
            opts.add_session_config_entry(key, str(value))
        tmp = tempfile.mkdtemp(prefix="ep-ortprof-")
        try:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(tmp, "ort")
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            prepared = self._prepare(feeds)
            for _ in range(runs + 1):
                sess.run(None, prepared)
            events = _read_trace(sess.end_profiling())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # the first run pays allocations: node events that end before the second model_run starts are left out
        run_starts = sorted(float(ev.get("ts", 0)) for ev in events if ev.get("name") == "model_run")
        after = run_starts[1] if len(run_starts) > runs else float("-inf")
        per_op: dict = {}
        for ev in events:
            name = str(ev.get("name", ""))
            if ev.get("cat") != "Node" or not name.endswith("_kernel_time") or float(ev.get("ts", 0)) < after:
                continue
            node = name[: -len("_kernel_time")]
            kind = str((ev.get("args") or {}).get("op_name", ""))
            per_op[node] = (kind, per_op.get(node, (kind, 0))[1] + float(ev.get("dur", 0)))
        if not per_op:
            return {"available": False, "reason": "onnxruntime's profiler recorded no node times"}
        return summarize_ops(per_op, runs, f"onnxruntime {self.runtime_version} profiler (kernel time)")


def _read_trace(path: str) -> list:
    with open(path, encoding="utf-8") as fh:
        events = json.load(fh)
    return events if isinstance(events, list) else []


# ================================================================ runtime session: openvino (OpenVINO CPU plugin)


# Requested on purpose: without the f32 hint the CPU plugin runs bf16 on CPUs that have it and loses fidelity.
_OV_HINTS = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"}


def _ov_value(value):
    if hasattr(value, "get_type_name"):  # openvino.Type, e.g. the precision hint -> "f32"
        return value.get_type_name()
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class OpenvinoSession(Session):
    """OpenVINO CPU plugin on an IR .xml (weights in the sibling .bin) or an .onnx file."""

    runtime_name = "openvino"

    def __init__(self, path: str, threads: int, options: dict | None = None) -> None:
        super().__init__()
        ov = _import_runtime("openvino", "openvino")
        if path.endswith(".xml") and not os.path.isfile(path[:-4] + ".bin"):
            raise AgentError(f"cannot load openvino model {path}: weights file {path[:-4] + '.bin'} is missing")
        config = dict(_OV_HINTS, INFERENCE_NUM_THREADS=threads)
        config.update({k: str(v) for k, v in (options or {}).items()})  # compile properties, as strings
        self._opened = (path, config)
        try:
            core = ov.Core()
            self._compiled = core.compile_model(core.read_model(path), "CPU", config)
        except Exception as exc:
            raise AgentError(f"cannot load openvino model {path}: {_one_line(exc)}") from exc
        self._request = self._compiled.create_infer_request()
        self.runtime_version = getattr(ov, "__version__", None) or ov.get_version()
        # Record what the plugin actually applied, read back from the compiled model.
        self.runtime_config = {"device": "CPU"}
        self.runtime_config.update({k: _ov_value(self._compiled.get_property(k)) for k in sorted(config)})
        self.input_details = [self._detail(p) for p in self._compiled.inputs]
        self.output_details = [self._detail(p) for p in self._compiled.outputs]
        # A port can carry several tensor names; any of them may be asked for.
        for port, det in zip(self._compiled.outputs, self.output_details):
            self._output_aliases.update({alias: det.name for alias in port.get_names()})

    @staticmethod
    def _detail(port) -> TensorDetail:
        pshape = port.get_partial_shape()
        shape = None if pshape.rank.is_dynamic else tuple(d.get_length() if d.is_static else -1 for d in pshape)
        etype = port.get_element_type()
        try:
            dtype = np.dtype(etype.to_dtype()).name
        except Exception:  # types numpy cannot express; feeds will then fail the dtype check with this name
            dtype = etype.get_type_name()
        return TensorDetail(port.get_any_name(), shape, dtype)

    def _run(self, feeds: dict) -> dict:
        self._request.infer(feeds)
        # .data is a view into the request's buffer, overwritten by the next infer: copy it out.
        return {det.name: self._request.get_output_tensor(i).data.copy() for i, det in enumerate(self.output_details)}

    def op_profile(self, feeds: dict, runs: int) -> dict:
        """OpenVINO's performance counters (PERF_COUNT) of a second compiled model: per executed node real time."""
        ov = _import_runtime("openvino", "openvino")
        path, config = self._opened
        core = ov.Core()
        request = core.compile_model(core.read_model(path), "CPU", dict(config, PERF_COUNT=True)).create_infer_request()
        prepared = self._prepare(feeds)
        request.infer(prepared)  # first run pays allocations: not counted
        per_op: dict = {}
        for _ in range(runs):
            request.infer(prepared)
            for info in request.get_profiling_info():
                if str(info.status).rsplit(".", 1)[-1] != "EXECUTED":
                    continue
                us = info.real_time.total_seconds() * 1e6
                kind = f"{info.node_type} ({info.exec_type})" if info.exec_type else str(info.node_type)
                per_op[info.node_name] = (kind, per_op.get(info.node_name, (kind, 0.0))[1] + us)
        if not per_op:
            return {"available": False, "reason": "OpenVINO reported no executed nodes"}
        return summarize_ops(per_op, runs, f"openvino {self.runtime_version} performance counters (real time)")


# ================================================================ runtime session: tflite (LiteRT interpreter)


def match_names(wanted: list, available: list, what: str, require_all: bool) -> dict:
    """Map wanted names onto model tensor names: exact name, then contained name, then position.

    TFLite converters mangle names (`image` becomes `serving_default_image:0`), so after exact matches each
    remaining wanted name takes the shortest remaining tensor name that contains it (longest wanted names go
    first, so `input_ids` claims its tensor before `ids`). Whatever is still unmatched is paired by position:
    the i-th leftover wanted name with the i-th leftover tensor in model order.
    """
    free = list(available)
    result = {}
    for name in wanted:
        if name in free:
            result[name] = name
            free.remove(name)
    for name in sorted((n for n in wanted if n not in result), key=len, reverse=True):
        candidates = [a for a in free if name in a]
        if candidates:
            result[name] = min(candidates, key=len)
            free.remove(result[name])
    rest = [n for n in wanted if n not in result]
    if len(rest) > len(free):
        raise AgentError(f"{what} '{rest[len(free)]}' matches no model {what}; model {what}s are {list(available)}")
    if require_all and len(free) > len(rest):
        raise AgentError(f"{what} '{free[len(rest)]}': missing feed (feeds given: {list(wanted)})")
    result.update(zip(rest, free))
    return {n: result[n] for n in wanted}


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """Float -> int with an affine scale/zero-point; rounds half away from zero like TFLite's kernels, clips."""
    if not np.all(np.isfinite(values)):
        raise AgentError("cannot quantize non-finite values")
    scaled = np.asarray(values, dtype=np.float64) / scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    info = np.iinfo(dtype)
    return np.clip(rounded, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def _import_tflite():
    """Interpreter class, runtime name and version, trying the LiteRT successor first."""
    from importlib import metadata

    errors = []
    candidates = (("ai_edge_litert.interpreter", "ai-edge-litert"), ("tflite_runtime.interpreter", "tflite-runtime"))
    for module, dist in candidates:
        try:
            interpreter = importlib.import_module(module)
        except ImportError as exc:
            errors.append(f"{module}: {_one_line(exc)}")
            continue
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = getattr(interpreter, "__version__", "unknown")
        return interpreter.Interpreter, module.split(".")[0], version
    try:
        import tensorflow as tf  # heavy; only when neither light runtime is installed
    except ImportError as exc:
        errors.append(f"tensorflow: {_one_line(exc)}")
        raise AgentError("no TFLite runtime is installed here (" + "; ".join(errors) + ")") from exc
    return tf.lite.Interpreter, "tensorflow", tf.__version__


def _signature_names(interp) -> tuple:
    """Tensor index -> clean name from the model's single signature, if it has exactly one."""
    try:
        signatures = interp.get_signature_list()
        if len(signatures) != 1:
            return {}, {}
        runner = interp.get_signature_runner(next(iter(signatures)))
        ins = {d["index"]: name for name, d in runner.get_input_details().items()}
        outs = {d["index"]: name for name, d in runner.get_output_details().items()}
        return ins, outs
    except Exception:  # old runtimes without signatures: fall back to tensor names
        return {}, {}


class TfliteSession(Session):
    """TFLite interpreter. Float feeds to quantized int8/uint8/int16 inputs are quantized, such outputs dequantized.

    Feeds are matched to tensors with `match_names` (exact, contained, position). Integer feeds for integer
    inputs of another width (int64 token ids for an int32 input) are cast only when every value fits.
    """

    def __init__(self, path: str, threads: int, options: dict | None = None) -> None:
        if options:
            raise AgentError(f"the tflite interpreter takes no runtime options, got {sorted(options)}")
        super().__init__()
        interpreter_cls, self.runtime_name, self.runtime_version = _import_tflite()
        try:
            self._interp = interpreter_cls(model_path=path, num_threads=threads)
            self._interp.allocate_tensors()
        except Exception as exc:
            raise AgentError(f"cannot load tflite model {path}: {_one_line(exc)}") from exc
        self.runtime_config = {"num_threads": threads, "interpreter": f"{self.runtime_name}.Interpreter"}
        raw_in, raw_out = self._interp.get_input_details(), self._interp.get_output_details()
        sig_in, sig_out = _signature_names(self._interp)
        # Signature names apply only when they point at the main graph's I/O tensors.
        sig_in = sig_in if set(sig_in) <= {d["index"] for d in raw_in} else {}
        sig_out = sig_out if set(sig_out) <= {d["index"] for d in raw_out} else {}
        self.input_details = [self._detail(d, sig_in) for d in raw_in]
        self.output_details = [self._detail(d, sig_out) for d in raw_out]
        pairs = list(zip(self.input_details + self.output_details, raw_in + raw_out))
        self._index = {det.name: raw["index"] for det, raw in pairs}
        self._current_shape = {det.name: tuple(int(v) for v in raw["shape"]) for det, raw in pairs[: len(raw_in)]}

    @staticmethod
    def _detail(raw: dict, aliases: dict) -> TensorDetail:
        name = aliases.get(raw["index"], raw["name"])
        signature = raw.get("shape_signature")
        dims = signature if signature is not None and len(signature) else raw["shape"]
        dtype = np.dtype(raw["dtype"]).name
        scale, zero_point = raw.get("quantization", (0.0, 0))
        scales = (raw.get("quantization_parameters") or {}).get("scales")
        if scales is not None and len(scales) > 1:
            raise AgentError(f"tensor '{name}': per-channel quantized model I/O is not supported")
        if dtype in _QUANTIZED_IO and scale:
            return TensorDetail(name, tuple(int(v) for v in dims), dtype, float(scale), int(zero_point))
        return TensorDetail(name, tuple(int(v) for v in dims), dtype)

    def map_outputs(self, names: list[str]) -> dict[str, str]:
        return match_names(names, self.output_names, "output", require_all=False)

    def op_profile(self, feeds: dict, runs: int) -> dict:
        return {"available": False, "reason": f"the {self.runtime_name} Python interpreter has no per-op profiler; "
                "LiteRT's benchmark_model --enable_op_profiling=true gives one on the device"}

    def _prepare(self, feeds: dict) -> dict:
        by_name = {d.name: d for d in self.input_details}
        prepared = {}
        for feed_name, input_name in match_names(list(feeds), self.input_names, "input", require_all=True).items():
            det = by_name[input_name]
            arr = _tflite_cast(det, np.asarray(feeds[feed_name]), feed_name)
            if not _shape_fits(det.shape, arr.shape):
                raise AgentError(
                    f"input '{feed_name}' (tensor '{input_name}'): expected {_fmt_shape(det.shape)} {det.dtype}, "
                    f"got {_fmt_shape(arr.shape)}"
                )
            prepared[input_name] = arr
        return prepared

    def _run(self, feeds: dict) -> dict:
        resized = False
        for name, arr in feeds.items():
            if arr.shape != self._current_shape[name]:  # dynamic dim: only reallocate when the shape changes
                self._interp.resize_tensor_input(self._index[name], list(arr.shape))
                self._current_shape[name] = arr.shape
                resized = True
        if resized:
            self._interp.allocate_tensors()
        for name, arr in feeds.items():
            self._interp.set_tensor(self._index[name], np.ascontiguousarray(arr))
        self._interp.invoke()
        outputs = {}
        for det in self.output_details:
            value = np.array(self._interp.get_tensor(self._index[det.name]))  # copy: buffers are reused
            outputs[det.name] = value if det.scale is None else dequantize(value, det.scale, det.zero_point)
        return outputs


def _tflite_cast(det: TensorDetail, arr: np.ndarray, feed_name: str) -> np.ndarray:
    if _dtype_is(arr, det.dtype):
        return arr
    if det.scale is not None and arr.dtype.kind == "f":
        return quantize(arr, det.scale, det.zero_point, det.dtype)
    if arr.dtype.kind in "iu" and np.dtype(det.dtype).kind in "iu":
        info = np.iinfo(det.dtype)
        if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
            return arr.astype(det.dtype)
        raise AgentError(f"input '{feed_name}': values do not fit the model's {det.dtype} input")
    raise AgentError(f"input '{feed_name}': expected {_fmt_shape(det.shape)} {det.dtype}, got {arr.dtype.name}")


# ================================================================ SESSIONS: format -> runtime session


SESSIONS = {"onnx": OnnxSession, "openvino": OpenvinoSession, "tflite": TfliteSession}
FORMATS = tuple(SESSIONS)


def open_model(path: str, fmt: str, threads: int, options: dict | None = None) -> Session:
    """Load `path` with the runtime for `fmt` using `threads` CPU threads and the runtime `options` (onnxruntime
    session config entries, OpenVINO compile properties) the bundle's manifest names."""
    if fmt not in SESSIONS:
        raise AgentError(f"unknown format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if not isinstance(threads, int) or threads < 1:
        raise AgentError(f"threads must be a positive integer, got {threads!r}")
    if not os.path.isfile(path):
        raise AgentError(f"model file not found: {path}")
    return SESSIONS[fmt](str(path), threads, options)


# ================================================================ golden vectors


@dataclass
class Golden:
    """Golden vectors loaded from a directory: per sample, the input feeds and the expected outputs."""

    directory: str
    inputs: list
    outputs: list
    atol: float
    rtol: float
    samples: list = field(default_factory=list)
    expected: list = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.samples)


def _check_tensor_names(names, where: str) -> list:
    if not isinstance(names, (list, tuple)) or not names:
        raise AgentError(f"{where}: expected a non-empty list of tensor names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not _TENSOR_NAME.fullmatch(name) or name in (".", ".."):
            raise AgentError(f"{where}: tensor name {name!r} must match {_TENSOR_NAME.pattern}")
    if len(set(names)) != len(names):
        raise AgentError(f"{where}: duplicate tensor names in {list(names)}")
    return list(names)


def _check_tolerance(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise AgentError(f"golden {what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise AgentError(f"golden file missing: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AgentError(f"golden file unreadable: {path}: {_one_line(exc)}") from exc


def load_golden(directory) -> Golden:
    """Read a golden directory written by `write_golden`; every listed file must exist."""
    root = Path(directory)
    meta_path = root / "golden.json"
    if not meta_path.is_file():
        raise AgentError(f"golden vectors not found: {meta_path} does not exist")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AgentError(f"golden index unreadable: {meta_path}: {_one_line(exc)}") from exc
    if not isinstance(meta, dict) or not {"count", "inputs", "outputs", "atol", "rtol"} <= set(meta):
        raise AgentError(f"golden index {meta_path} needs keys count, inputs, outputs, atol, rtol")
    count = meta["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AgentError(f"golden index {meta_path}: count must be an integer >= 1, got {count!r}")
    where = str(meta_path)
    golden = Golden(str(root), _check_tensor_names(meta["inputs"], where), _check_tensor_names(meta["outputs"], where),
                    _check_tolerance(meta["atol"], "atol"), _check_tolerance(meta["rtol"], "rtol"))
    for k in range(count):
        sample_dir = root / f"{k:03d}"
        golden.samples.append({n: _load_npy(sample_dir / f"input.{n}.npy") for n in golden.inputs})
        golden.expected.append({n: _load_npy(sample_dir / f"output.{n}.npy") for n in golden.outputs})
    return golden


def write_golden(directory, samples: list, outputs: list, atol: float, rtol: float) -> Path:
    """Write golden vectors; same arrays -> byte-identical files (np.save output is deterministic).

    The directory must be new, empty, or an earlier golden directory (whose files are then replaced).
    """
    if not samples or len(samples) != len(outputs):
        raise AgentError(f"golden needs as many output dicts as samples (>= 1), got {len(samples)} and {len(outputs)}")
    in_names = _check_tensor_names(list(samples[0]), "golden inputs")
    out_names = _check_tensor_names(list(outputs[0]), "golden outputs")
    for k, (feeds, expected) in enumerate(zip(samples, outputs)):
        if list(feeds) != in_names or list(expected) != out_names:
            raise AgentError(f"golden sample {k}: names differ from sample 0 ({in_names} -> {out_names})")
    meta = {"count": len(samples), "inputs": in_names, "outputs": out_names,
            "atol": _check_tolerance(atol, "atol"), "rtol": _check_tolerance(rtol, "rtol")}
    root = Path(directory)
    _clear_golden_dir(root)
    for k, (feeds, expected) in enumerate(zip(samples, outputs)):
        sample_dir = root / f"{k:03d}"
        sample_dir.mkdir()
        for prefix, arrays in (("input", feeds), ("output", expected)):
            for name, value in arrays.items():
                _save_npy(sample_dir / f"{prefix}.{name}.npy", value)
    (root / "golden.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return root


def _clear_golden_dir(root: Path) -> None:
    if not root.exists():
        root.mkdir(parents=True)
        return
    entries = list(root.iterdir())
    if entries and not (root / "golden.json").is_file():
        raise AgentError(f"refusing to write golden vectors into {root}: not empty and not a golden directory")
    for entry in entries:  # only what write_golden itself creates
        if entry.name == "golden.json":
            entry.unlink()
        elif entry.is_dir() and not entry.is_symlink() and entry.name.isdigit():
            shutil.rmtree(entry)


def _save_npy(path: Path, value) -> None:
    # C order always: a Fortran-ordered copy of the same values would otherwise give different bytes.
    arr = np.ascontiguousarray(np.asarray(value))
    try:
        with open(path, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
    except ValueError as exc:
        raise AgentError(f"cannot store golden array {path.name} ({arr.dtype}): {_one_line(exc)}") from exc


def _compare(got, expected: np.ndarray, atol: float, rtol: float) -> tuple:
    """(failure message or None, max abs error or None when not computable)."""
    got = np.asarray(got)
    if got.shape != expected.shape:  # allclose would broadcast [1, 4] against [4]: compare shapes first
        return f"shape {_fmt_shape(got.shape)} != expected {_fmt_shape(expected.shape)}", None
    g, e = got.astype(np.float64), expected.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return f"{int(np.sum(~np.isfinite(g)))} non-finite values", None
    err = float(np.max(np.abs(g - e))) if g.size else 0.0
    close = np.isclose(g, e, atol=atol, rtol=rtol)
    if close.all():
        return None, err if np.isfinite(err) else None
    return (f"max_abs_err {err:.4g} exceeds atol {atol:g} + rtol {rtol:g}*|expected| "
            f"at {int(close.size - close.sum())}/{close.size} elements"), err if np.isfinite(err) else None


def check_golden(session: Session, golden: Golden) -> dict:
    """Run every golden sample; a sample passes when all its outputs are np.allclose(atol, rtol) and same shape.

    Feed mismatches raise AgentError: golden inputs that do not fit the model are an error, not a failure.
    """
    mapping = session.map_outputs(golden.outputs)
    failures, passed, errors = [], 0, []
    for k, (feeds, expected) in enumerate(zip(golden.samples, golden.expected)):
        got = session.run(feeds)
        sample_ok = True
        for name in golden.outputs:
            message, err = _compare(got[mapping[name]], expected[name], golden.atol, golden.rtol)
            if err is not None:
                errors.append(err)
            if message:
                sample_ok = False
                failures.append(f"sample {k:03d} output '{name}': {message}")
        passed += sample_ok
    return {"checked": golden.count, "passed": passed, "max_abs_err": max(errors) if errors else None,
            "atol": golden.atol, "rtol": golden.rtol, "failures": failures}


# ================================================================ measurements


def latency_stats(durations_ns: list) -> dict:
    """Milliseconds; percentiles by np.percentile (linear interpolation), std with ddof=0."""
    ms = np.asarray(durations_ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    stats = {"mean": ms.mean(), "p50": p50, "p90": p90, "p99": p99, "min": ms.min(), "max": ms.max(), "std": ms.std()}
    return {k: round(float(v), 6) for k, v in stats.items()}


# Run markers for an emulator that counts instructions (targets/transports/qemu.py sets the variable):
# lseek(/dev/null, magic offset) succeeds and returns 0, and the emulator's plugin sees the call (targets/qemu_insn.c).
MARKER_ENV = "EDGEPIPE_INSN_MARKERS"
_MARK_START, _MARK_STOP, _MARK_WARM = 0x4544474550495001, 0x4544474550495002, 0x4544474550495000


def _marker():
    """-> mark(offset): one marker call (a no-op seek on /dev/null), or None when nobody counts."""
    if os.environ.get(MARKER_ENV) != "1":
        return None
    fd = os.open(os.devnull, os.O_RDONLY)
    return lambda offset: os.lseek(fd, offset, os.SEEK_SET)


def time_runs(session: Session, feeds: dict, warmup: int, iterations: int, samples: list | None = None) -> dict:
    """Wall time of `session.run` (includes feed checks and TFLite (de)quantization, as a caller would pay);
    `samples` (a list) receives each run's milliseconds, in run order. With EDGEPIPE_INSN_MARKERS=1 each timed run
    is bracketed by the run markers."""
    mark = _marker()
    # like timeit: no cyclic garbage collection while measuring, or a collection lands in some runs only (from
    # before the warm-up, so the runs after a collection are not the timed ones)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    # preallocated and flat: a list growing (or int objects piling up) between runs would change the heap the
    # next run allocates from, and with it the instructions that run executes
    durations = array.array("q", bytes(8 * iterations))
    try:
        # warm-up and timed runs go through the same code (warm-up marks are ignored by the counter): Python
        # specializes the bytecode it runs often, and a marker path first run in timed runs would count that too
        for i in range(warmup + iterations):
            timed = i >= warmup
            start = time.perf_counter_ns()
            if mark:
                mark(_MARK_START if timed else _MARK_WARM)
            session.run(feeds)
            if mark:
                mark(_MARK_STOP if timed else _MARK_WARM)
            if timed:
                durations[i - warmup] = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    if samples is not None:
        samples.extend(round(d / 1e6, 6) for d in durations)
    return latency_stats(durations)


def peak_rss() -> tuple:
    """(bytes, source). VmHWM is this process's own peak; ru_maxrss survives fork+exec on Linux, so it is a fallback."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return 0, "unavailable"
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    return peak, "ru_maxrss (no /proc; may include the parent's peak)"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            fields = dict(line.split(":", 1) for line in fh if ":" in line and line.strip())
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        for key in ("model name", "Processor", "Hardware"):  # x86, older ARM kernels, ARM SoC name
            if fields.get(key):
                return fields[key]
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


# ================================================================ CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit 2 with usage text; the host wants one JSON line
        raise AgentError(f"bad arguments: {message}")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,127}")


def _option(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not _OPTION_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY matching {_OPTION_KEY.pattern}, got {text!r}")
    return key, value


def _parse_args(argv) -> argparse.Namespace:
    parser = _Parser(prog="agent.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model file (.onnx, .xml with its .bin, .tflite)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="runtime to load the model with")
    parser.add_argument("--threads", required=True, type=_count(1), help="CPU threads for the runtime")
    parser.add_argument("--warmup", type=_count(0), default=10, help="untimed runs before timing")
    parser.add_argument("--iterations", type=_count(1), default=50, help="timed runs")
    parser.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                        help="runtime option (repeatable): onnxruntime session config entry, OpenVINO property")
    parser.add_argument("--golden", required=True, help="golden vector directory (golden.json + NNN/*.npy)")
    parser.add_argument("--timing-sample", type=_count(0), default=0, help="golden sample used for timing")
    parser.add_argument("--op-profile", type=_count(0), default=0, metavar="RUNS",
                        help="runs with the runtime's per-op profiler on, after timing (0: none)")
    parser.add_argument("--eval-inputs", default=None, help=".npz of eval samples to run here (keys 'count' and "
                        "'<k>:<input name>'), for verification on the device")
    parser.add_argument("--eval-outputs", default=None, help=".npz written with their outputs ('<k>:<output name>', "
                        "named as in the golden vectors)")
    return parser.parse_args(argv)


def _measure(args: argparse.Namespace) -> tuple:
    start = time.perf_counter_ns()
    session = open_model(args.model, args.format, args.threads, dict(args.option))
    load_ms = (time.perf_counter_ns() - start) / 1e6
    golden = load_golden(args.golden)
    if args.timing_sample >= golden.count:
        raise AgentError(f"--timing-sample {args.timing_sample} is out of range: golden has {golden.count} samples")
    report = check_golden(session, golden)
    samples_ms: list = []
    latency = time_runs(session, golden.samples[args.timing_sample], args.warmup, args.iterations, samples_ms)
    op_profile = None
    if args.op_profile:
        try:
            op_profile = session.op_profile(golden.samples[args.timing_sample], args.op_profile)
        except Exception as exc:  # a profiler that fails costs the table, not the measurement
            op_profile = {"available": False, "reason": f"profiler failed: {_one_line(exc)}"}
    evaluated = None
    if args.eval_inputs:
        evaluated = run_eval(session, args.eval_inputs, args.eval_outputs, golden.outputs)
    rss_bytes, rss_source = peak_rss()
    result = {
        "ok": True, "format": args.format, "runtime": session.runtime_name, "runtime_version": session.runtime_version,
        "runtime_config": session.runtime_config, "threads": args.threads, "load_ms": round(load_ms, 6),
        "warmup": args.warmup, "iterations": args.iterations, "latency_ms": latency, "samples_ms": samples_ms,
        "peak_rss_bytes": rss_bytes, "peak_rss_source": rss_source, "cpu_model": cpu_model(),
        "machine": platform.machine(), "python": platform.python_version(),
        "inputs": [d.as_dict() for d in session.input_details],
        "outputs": [d.as_dict() for d in session.output_details],
        "golden": report,
    }
    if op_profile is not None:
        result["op_profile"] = op_profile
    if evaluated is not None:
        result["eval"] = evaluated
    return result, (3 if report["passed"] < report["checked"] else 0)


def run_eval(session: Session, inputs_path: str, outputs_path: str | None, output_names: list) -> dict:
    """Eval samples from an .npz (keys 'count', '<k>:<input>') -> their outputs in an .npz ('<k>:<output>', named
    as the golden vectors name them) -> {"samples", "outputs", "file"}."""
    if not outputs_path:
        raise AgentError("--eval-inputs needs --eval-outputs")
    with np.load(inputs_path, allow_pickle=False) as data:
        count = int(data["count"])
        keys = [k for k in data.files if k != "count"]
        samples = [{} for _ in range(count)]
        for key in keys:
            index, _, name = key.partition(":")
            if not index.isdigit() or int(index) >= count or not name:
                raise AgentError(f"eval inputs: bad key {key!r}")
            samples[int(index)][name] = data[key]
    names = session.map_outputs(list(output_names))
    arrays = {}
    for k, feeds in enumerate(samples):
        out = session.run(feeds)
        for name, resolved in names.items():
            arrays[f"{k}:{name}"] = np.asarray(out[resolved])
    with open(outputs_path, "wb") as fh:
        np.savez(fh, **arrays)
    return {"samples": count, "outputs": list(output_names), "file": outputs_path}


def main(argv=None) -> int:
    """CLI entry: exactly one JSON line on stdout, whatever happens (argparse --help aside)."""
    try:
        args = _parse_args(argv)
    except AgentError as exc:
        return _emit({"ok": False, "error": str(exc)}, 1)
    # Runtimes may print to fd 1 from C++; send that to stderr so stdout carries only our JSON line. This is the
    # agent's own process (the transport starts it; the build side never calls main()), so the descriptors are ours.
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        result, code = _measure(args)
    except Exception as exc:  # the one place the agent catches everything: it must always answer in JSON
        traceback.print_exc(file=sys.stderr)
        result, code = {"ok": False, "error": _one_line(exc)}, 1
    return _emit(result, code, saved_fd)


def _emit(result: dict, code: int, saved_fd: int | None = None) -> int:
    sys.stdout.flush()
    if saved_fd is not None:  # undo the stdout -> stderr diversion
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
    try:
        line = json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:  # never print invalid JSON (NaN) to the host
        line, code = json.dumps({"ok": False, "error": f"result not serializable: {_one_line(exc)}"}), 1
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
