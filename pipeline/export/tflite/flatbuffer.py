"""LiteRT flatbuffer inspection: .tflite bytes -> ops, tensors, dtypes and size facts; ModelT unpack/pack for the
rewrites (rewrite.py). Reads the file directly, because the interpreter refuses files with Flex ops.

tensorflow's flatbuffer schema module and flatbuffers are imported inside the functions only.
"""
from __future__ import annotations

from ...errors import StageError

# Ops that only change a tensor's type: they may touch float tensors in a full-integer model (float I/O, masks).
_CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE", "CAST"})
_FLOAT_TYPES = frozenset({"float32", "float16", "float64"})


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
