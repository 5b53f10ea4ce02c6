"""Tiny int8 models for the emulated-device tests (tests/test_transport_qemu.py, tools/bench_qemu.py): a dense
float model -> an int8 QDQ ONNX file (onnxruntime.quantization) and a full-integer int8 .tflite (TensorFlow's
converter), with golden inputs and float reference outputs.

The dense layer's weights are all positive and large and its inputs lie in [0, 1]: quantized, adjacent u8*s8
products then add up to more than 16 bits hold, which is exactly where onnxruntime's AVX2 (no VNNI) u8s8 kernels
saturate (DESIGN.md section 2, pipeline/device_settings.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IN, HIDDEN, OUT = 1024, 1024, 16


def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    w1 = rng.uniform(0.5, 1.0, size=(IN, HIDDEN)).astype(np.float32) / IN
    w2 = rng.uniform(-1.0, 1.0, size=(HIDDEN, OUT)).astype(np.float32)
    return w1, w2


def inputs(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, size=(1, IN)).astype(np.float32) for _ in range(count)]


def reference(x: np.ndarray) -> np.ndarray:
    w1, w2 = weights()
    return (np.maximum(x @ w1, 0.0) @ w2).astype(np.float32)


def output_step(onnx_int8: Path) -> float:
    """What it does: a QDQ model -> the scale of the DequantizeLinear that makes its output `y` (one output
    quantization step)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_int8))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "y")
    return float(inits[node.input[1]])


def build_onnx_int8(directory: Path) -> Path:
    """What it does: -> directory/dense_int8.onnx (QDQ, per-channel s8 weights, u8 activations), calibrated on 64
    inputs drawn like the test inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    w1, w2 = weights()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
         helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    directory.mkdir(parents=True, exist_ok=True)
    fp32, int8 = directory / "dense_fp32.onnx", directory / "dense_int8.onnx"
    onnx.save(model, str(fp32))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({"x": x} for x in inputs(64, seed=1))

        def get_next(self):
            return next(self._it, None)

    quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return int8


def build_tflite_int8(directory: Path) -> Path:
    """What it does: -> directory/dense_int8.tflite, full-integer int8 (int8 input and output), via TensorFlow."""
    import tensorflow as tf

    w1, w2 = weights()

    class Dense(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, IN], tf.float32, name="x")])
        def __call__(self, x):
            return {"y": tf.matmul(tf.nn.relu(tf.matmul(x, w1)), w2)}

    module = Dense()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.__call__.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x] for x in inputs(64, seed=1))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dense_int8.tflite"
    path.write_bytes(converter.convert())
    return path
