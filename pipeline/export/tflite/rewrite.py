"""LiteRT flatbuffer rewrites: an int8 .tflite -> the same model without float QUANTIZE -> DEQUANTIZE round trips,
or with kept-float FULLY_CONNECTED weights stored int8 behind a DEQUANTIZE.
"""
from __future__ import annotations

from .. import symmetric_int8
from .flatbuffer import _pack, _unpack


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
