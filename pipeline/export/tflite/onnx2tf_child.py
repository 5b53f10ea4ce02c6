"""Child process of export_savedmodel: a job file (ONNX path, samples, layouts) -> saved_model/ + signature.json.

Runs in a toolchain child process (pipeline/export/child.py) in a scratch working directory (savedmodel.py); it
imports onnx2tf, tensorflow and tf_keras, which never load in the build's own process for this step.
"""
from __future__ import annotations

import json
from pathlib import Path


def convert(job: dict, progress) -> dict:
    """Child process: one onnx2tf conversion -> saved_model/ and signature.json (see ExportSavedModel); returns the
    signature. Runs in the scratch directory that holds onnx2tf's sample-photo file."""
    from onnx2tf import onnx2tf as core

    model = core.convert(input_onnx_file_path=job["onnx"], output_folder_path="onnx2tf_out", disable_model_save=True,
                         non_verbose=True, custom_input_op_name_np_data_path=job["samples"],
                         keep_ncw_or_nchw_or_ncdhw_input_names=job["keep_layout"] or None,
                         # onnx2tf's CLI lower-cases these names and its ops compare lower case; its API does not
                         replace_to_pseudo_operators=[op.lower() for op in job["pseudo_ops"]])
    return _save_with_onnx_names(model, job)


def _save_with_onnx_names(model, job: dict) -> dict:
    """Keras model -> SavedModel whose serving signature uses the ONNX input/output names, and its signature.json.

    onnx2tf's own signature calls the outputs output_0..N; golden vectors and firmware need the ONNX names.
    """
    import onnx
    import tensorflow as tf
    import tf_keras

    graph = onnx.load(job["onnx"], load_external_data=False).graph
    output_names = [o.name for o in graph.output]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]

    def serve(*inputs):
        result = model(list(inputs))
        return dict(zip(output_names, result if isinstance(result, (list, tuple)) else [result]))

    archive = tf_keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve, input_signature=specs)
    archive.write_out(job["out"])
    loaded = tf.saved_model.load(job["out"]).signatures["serving_default"]

    def describe(spec) -> dict:
        return {"shape": [-1 if d is None else int(d) for d in spec.shape], "dtype": spec.dtype.name}

    signature = {"inputs": {n: describe(s) for n, s in loaded.structured_input_signature[1].items()},
                 "outputs": {n: describe(s) for n, s in loaded.structured_outputs.items()}}
    Path(job["signature"]).write_text(json.dumps(signature, indent=1, sort_keys=True), encoding="utf-8")
    return signature
