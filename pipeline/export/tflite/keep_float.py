"""keep_float for TFLite: keep_float entries (ONNX node names or op types) + the float model -> the TFLite tensors
that stay float, found by value (onnx2tf keeps no ONNX node names).

onnx, onnxruntime and the LiteRT interpreter are imported inside the functions only.
"""
from __future__ import annotations

import warnings

from ...artifact import Artifact
from ...errors import StageError
from .convert import _convert
from .flatbuffer import inspect_tflite


def keep_float_scope(tf, artifact: Artifact, patterns: list[str], calib) -> tuple[list[str], set[str]]:
    """keep_float entries (ONNX node-name prefixes or op types) -> (ONNX node names, TFLite tensors kept float).

    onnx2tf keeps no ONNX node names, so the nodes are found in the float TFLite graph by value: one calibration
    sample runs through the ONNX model (onnxruntime) and the float .tflite, and every ONNX value is matched to the
    TFLite tensors that hold the same numbers in any layout. A node's ops are those between the TFLite tensors
    matching its output and the matched tensors feeding them.
    """
    import onnx

    from ...verify import adapt_sample

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
