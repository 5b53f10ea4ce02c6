"""Child process of export_savedmodel: a job file (ONNX path, samples, layouts) -> saved_model/ + signature.json.

Run as `python -m pipeline.export.tflite.onnx2tf_child JOB` in a scratch working directory (savedmodel.py); it
imports onnx2tf, tensorflow and tf_keras, which never load in the build's own process for this step.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _onnx2tf_main(job_file: str) -> int:
    """Child process: one onnx2tf conversion -> saved_model/ and signature.json (see ExportSavedModel)."""
    import numpy as np
    import requests

    def refuse(*args, **kwargs):
        raise RuntimeError("onnx2tf tried to use the network; edgepipe converts offline")

    requests.Session.request = refuse  # every requests.get/post goes through a Session
    from onnx2tf import onnx2tf as core

    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    images = [np.load(path) for _, path in job["samples"]]
    # Called when every input is a 3-channel 4-D tensor; onnx2tf would download 20 MS-COCO crops from GitHub.
    core.download_test_image_data = lambda: next(a for a in images if a.ndim == 4).astype(np.float32)
    model = core.convert(input_onnx_file_path=job["onnx"], output_folder_path="onnx2tf_out", disable_model_save=True,
                         non_verbose=True, custom_input_op_name_np_data_path=job["samples"],
                         keep_ncw_or_nchw_or_ncdhw_input_names=job["keep_layout"] or None,
                         # onnx2tf's CLI lower-cases these names and its ops compare lower case; its API does not
                         replace_to_pseudo_operators=[op.lower() for op in job["pseudo_ops"]])
    _save_with_onnx_names(model, job)
    return 0


def _save_with_onnx_names(model, job: dict) -> None:
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



if __name__ == "__main__":
    sys.exit(_onnx2tf_main(sys.argv[1]))
