"""Device side of edgepipe: target profiles, transports (how the host reaches a device) and the on-device agent.

Importing this package stays light: no numpy, onnxruntime, openvino, tensorflow or torch here. `targets.agent`
is a standalone script pushed to devices; `targets.transport` holds the Transport ABC and its implementations.
"""
