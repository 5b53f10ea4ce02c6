"""Format registry: one `Format` record per deployable format -> everything the rest of edgepipe asks about a format
(config choices, stage chains, the stage table, runtimes, bundle file suffixes, load snippets, int8 schemes).

Light on purpose: plain data, no imports of the modules it names ("module:Name" strings, imported on demand).

Who reads it: config.py / target_config.py (the format and runtime choices of profiles and release configs, the
runtime that fits a format, which int8 options a format has), plan.py (EXPORT_CHAINS), stages.py (STAGES),
verify.py and profile.py (artifact kind -> format), bundle.py and publish.py (MODEL_SUFFIXES), report.py (load
snippets, format order), sensitivity.py (the int8 scheme the simulation mimics). tests/test_formats.py checks every
record: its stages resolve and chain, its agent session exists, its references import.

How to add a format (say ExecuTorch `.pte`, or a vendor NPU format):

1. Build side, one module: e.g. `pipeline/export/executorch.py` with its Stage classes (an exporter consuming
   "onnx" or "torch", a quantizer if it has int8), each with `name`, `version`, `consumes`, `produces` (the new
   artifact kind, e.g. "pte"), `requires` and `extra`. A toolchain that can crash, print from C++ or needs
   environment variables runs its conversion in a child (pipeline/export/child.py: `run_stage_child`); keep_float
   entries (ONNX node names) are mapped onto its graph by a function of that module.
2. Device side, one session class in targets/agent.py: a `Session` subclass in its own marked section
   ("runtime session: <format>"), listed in the agent's SESSIONS table under the format's name. The agent is
   pushed to devices alone (stdlib + numpy + the runtime), so it cannot import this registry; the test above
   checks that both name the same formats.
3. One `Format(...)` entry in FORMATS below: name, runtime, artifact kind, file suffixes, the stage chain per
   precision (stage names), the stages it adds ("name" -> "module:Class"), the agent session's class name, the
   README load snippet, the keep_float translator, and its int8 scheme.
4. A target profile under targets/profiles/ using it, and tools/write_schemas.py to refresh the JSON Schemas.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Int8Scheme:
    """What a format's int8 quantizer does with the profile's settings (the sensitivity pass simulates the same)."""

    activation_type: str | None = None  # the activation type the toolchain always uses (None: the profile's)
    activation_symmetry_from_preset: bool = False  # NNCF: symmetric activations = preset "performance"
    weights_always_symmetric: bool = True  # False: the profile's symmetric_weights decides
    # "module:function" (target -> set of ONNX op types the quantizer touches by default); None: every op, or not
    # known at the ONNX level
    default_op_types: str | None = None


@dataclass(frozen=True)
class Format:
    name: str  # spelled as in profiles and code: "onnx", "openvino", "tflite"
    runtime: str  # the runtime that loads it (a profile's `runtime` must be this)
    artifact_kind: str  # Artifact.kind of its final model files
    suffixes: tuple[str, ...]  # model files in a bundle
    chains: dict[str, tuple[str, ...]]  # precision -> stage names after load (and compress)
    stages: dict[str, str]  # the stages this format brings: registry name -> "module:Class"
    agent_session: str  # class name in targets/agent.py SESSIONS
    load_snippet: str  # the bundle README's "Load it" code
    keep_float: str  # "module:function" mapping keep_float entries (ONNX names/op types) onto this format's graph
    int8: Int8Scheme = field(default_factory=Int8Scheme)
    no_dynamic_activations: str | None = None  # why activations: dynamic is unavailable (None: available)
    blockwise: bool = False  # quantization.blockwise (onnxruntime MatMulNBits) applies
    intermediate_kinds: tuple[str, ...] = ()  # artifact kinds its chains make on the way (not shippable)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format(
        name="onnx", runtime="onnxruntime", artifact_kind="onnx", suffixes=(".onnx",),
        chains={"fp32": ("export_onnx",), "int8": ("export_onnx", "quantize_onnx")},
        stages={"export_onnx": "pipeline.export.onnx:ExportOnnx", "quantize_onnx": "pipeline.export.onnx:QuantizeOnnx"},
        agent_session="OnnxSession",
        load_snippet='import onnxruntime as ort\nopts = ort.SessionOptions(); opts.intra_op_num_threads = 1\n'
                     'sess = ort.InferenceSession("model.onnx", opts, providers=["CPUExecutionProvider"])\n'
                     'outputs = sess.run(None, feeds)',
        keep_float="pipeline.export.onnx:_keep_float_nodes",
        int8=Int8Scheme(weights_always_symmetric=False, default_op_types="pipeline.export.onnx:default_op_types"),
        blockwise=True),
    Format(
        name="openvino", runtime="openvino", artifact_kind="openvino", suffixes=(".xml", ".bin"),
        chains={"fp32": ("export_onnx", "convert_openvino"), "fp16": ("export_onnx", "convert_openvino"),
                "int8": ("export_onnx", "convert_openvino", "quantize_openvino")},
        stages={"convert_openvino": "pipeline.export.openvino:ConvertOpenvino",
                "quantize_openvino": "pipeline.export.openvino:QuantizeOpenvino"},
        agent_session="OpenvinoSession",
        load_snippet='import openvino as ov\n'
                     'compiled = ov.Core().compile_model("model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32",\n'
                     '    "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})  # f32: the CPU default is bf16\n'
                     'outputs = compiled(feeds)',
        keep_float="pipeline.export.openvino:_keep_float_scope",
        int8=Int8Scheme(activation_symmetry_from_preset=True),
        no_dynamic_activations="NNCF quantizes activations statically"),
    Format(
        name="tflite", runtime="litert", artifact_kind="tflite", suffixes=(".tflite",),
        chains={"fp32": ("export_onnx", "export_savedmodel", "convert_tflite"),
                "fp16": ("export_onnx", "export_savedmodel", "convert_tflite"),
                "int8": ("export_onnx", "export_savedmodel", "quantize_tflite")},
        stages={"export_savedmodel": "pipeline.export.tflite.savedmodel:ExportSavedModel",
                "convert_tflite": "pipeline.export.tflite.convert:ConvertTflite",
                "quantize_tflite": "pipeline.export.tflite.quantize:QuantizeTflite"},
        agent_session="TfliteSession",
        load_snippet='from ai_edge_litert.interpreter import Interpreter\n'
                     'interp = Interpreter(model_path="model.tflite", num_threads=1); interp.allocate_tensors()\n'
                     '# int8 inputs: quantize with the scale/zero-point in manifest.json iospec[..].quantization\n'
                     'runner = interp.get_signature_runner(); outputs = runner(**feeds)',
        keep_float="pipeline.export.tflite.keep_float:keep_float_scope",
        int8=Int8Scheme(activation_type="int8"),
        intermediate_kinds=("savedmodel",)),
)}

FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
RUNTIMES: tuple[str, ...] = tuple(dict.fromkeys(f.runtime for f in FORMATS.values()))
MODEL_KINDS: tuple[str, ...] = tuple(f.artifact_kind for f in FORMATS.values())
FORMAT_OF_KIND: dict[str, str] = {f.artifact_kind: f.name for f in FORMATS.values()}
MODEL_SUFFIXES: tuple[str, ...] = tuple(dict.fromkeys(s for f in FORMATS.values() for s in f.suffixes))
EXPORT_CHAINS: dict[tuple[str, str], tuple[str, ...]] = {
    (f.name, precision): chain for f in FORMATS.values() for precision, chain in f.chains.items()}
FORMAT_STAGES: dict[str, str] = {name: ref for f in FORMATS.values() for name, ref in f.stages.items()}


def get(name: str) -> Format:
    """What it does: a format name -> its record (KeyError for an unknown one: configs only admit FORMAT_NAMES)."""
    return FORMATS[name]


def resolve(ref: str):
    """What it does: a "module:Name" reference of a record -> the object (its module imported now)."""
    import importlib

    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
