"""edgepipe build side: release config -> compressed, exported, calibrated, verified, profiled bundles.

Importing this package is light on purpose: torch, onnxruntime, openvino and tensorflow are imported only
inside the stages that need them.
"""
__version__ = "0.1.0"
