"""TFLite branch: ONNX fp32 artifact -> SavedModel (onnx2tf) -> TFLite fp32/fp16, or full-integer int8 per target.

One module per concern: savedmodel.py (export_savedmodel) drives onnx2tf_child.py (the onnx2tf child process);
convert.py (convert_tflite and the shared converter call), quantize.py (quantize_tflite), keep_float.py (ONNX
nodes -> TFLite tensors kept float), flatbuffer.py (reading .tflite files), rewrite.py (flatbuffer rewrites).
GELU's Erf is rebuilt from builtin ops, because a FlexErf op does not load in the LiteRT interpreter.

tensorflow, onnx2tf, onnx, onnxruntime and the LiteRT interpreter are imported inside the stages only.
"""
from __future__ import annotations

from .convert import ConvertTflite, converter_message
from .flatbuffer import float_ops, inspect_tflite, model_facts
from .keep_float import keep_float_scope
from .quantize import QuantizeTflite
from .rewrite import drop_float_round_trips, weight_only_int8_tflite
from .savedmodel import PSEUDO_OPS, ExportSavedModel, input_layouts

__all__ = ["PSEUDO_OPS", "ConvertTflite", "ExportSavedModel", "QuantizeTflite", "converter_message",
           "drop_float_round_trips", "float_ops", "input_layouts", "inspect_tflite", "keep_float_scope",
           "model_facts", "weight_only_int8_tflite"]
