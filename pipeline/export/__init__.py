"""Exporters: torch artifacts -> ONNX (and int8 QDQ); OpenVINO and TFLite join in the formats issue."""
