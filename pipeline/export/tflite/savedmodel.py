"""ONNX fp32 artifact -> SavedModel (export_savedmodel): onnx2tf in a child process (onnx2tf_child.py), the input
layouts it chose and the ONNX names it kept.

onnx2tf runs in a toolchain child (pipeline/export/child.py) with a scratch working directory of its own: it writes
scratch files into its cwd, prints a banner and calls sys.exit on errors; none of that may reach the build. For
models whose inputs are all 3-channel images it loads sample photos from its cwd, downloading them when absent:
the scratch directory holds that file, made of our own eval sample, so it never goes to the network. Image inputs
come out NHWC (a camera's own layout, and measured faster than keeping NCHW, which costs a TRANSPOSE op in the
graph); the change is declared in meta["input_layouts"] so that verify, the golden vectors and the manifest feed
and describe that layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from ...artifact import LOG_DIR, Artifact
from ...errors import StageError
from ...stages import Stage, StageContext
from ..child import run_child

# ONNX ops onnx2tf rebuilds from TFLite builtins: plain onnx2tf emits FlexErf, which LiteRT refuses to run.
PSEUDO_OPS = ("Erf",)
ONNX2TF_TIMEOUT_S = 3600
# onnx2tf's own sample-photo file: used from the cwd when present (onnx2tf.utils.common_functions.
# download_test_image_data), fetched from GitHub otherwise.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
# The child's environment only: TensorFlow's C++ log level (read once, at import), and an unreachable proxy for
# requests (onnx2tf's downloader), so that a download attempt fails at once instead of reaching the network.
ONNX2TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


class ExportSavedModel(Stage):
    name = "export_savedmodel"
    version = 3
    consumes = ("onnx",)
    produces = "savedmodel"
    requires = ("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnxruntime", "onnx_graphsurgeon", "sng4onnx")
    extra = "tflite"

    def config(self, ctx: StageContext) -> dict:
        return {"pseudo_ops": list(PSEUDO_OPS), "keep_layout": _keep_layout_inputs(ctx.iospec),
                "iospec": ctx.iospec.model_dump(mode="json")}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        # Absolute paths: the child runs inside the scratch directory, and the cache dir may be relative.
        scratch = (ctx.workdir / "onnx2tf_scratch").resolve()
        scratch.mkdir()
        try:
            # onnx2tf rewrites its input file in place (it simplifies the graph): give it a scratch copy, never
            # the cached artifact, or the export_onnx cache entry stops matching its hashes.
            onnx_copy = scratch / artifact.main_file.name
            shutil.copyfile(artifact.main_file, onnx_copy)
            job = _write_job(scratch, onnx_copy, ctx)
            run_child("pipeline.export.tflite.onnx2tf_child:convert", job, what=f"onnx2tf on {onnx_copy.name}",
                      log_path=ctx.workdir / LOG_DIR / "onnx2tf.log", progress=ctx.progress, env=ONNX2TF_ENV,
                      cwd=scratch, timeout_s=ONNX2TF_TIMEOUT_S, log_name="onnx2tf")
            signature = json.loads((scratch / "signature.json").read_text(encoding="utf-8"))
            shutil.move(str(scratch / "saved_model"), str(ctx.workdir / "saved_model"))
            # fingerprint.pb carries a random id per save; nothing downstream reads it, and without it the
            # SavedModel (hence the lineage recorded in every bundle) is byte-identical across builds.
            (ctx.workdir / "saved_model" / "fingerprint.pb").unlink(missing_ok=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        # quantize_tflite finds keep_float's ONNX nodes in the TFLite graph by running this exact ONNX model.
        shutil.copyfile(artifact.main_file, ctx.workdir / "model.onnx")
        meta = {"signature": signature, "input_layouts": input_layouts(signature, ctx.iospec),
                "onnx2tf": {"pseudo_ops": list(PSEUDO_OPS), "keep_layout": _keep_layout_inputs(ctx.iospec)}}
        _check_outputs(signature, ctx.iospec)
        return ctx.artifact("savedmodel", component=artifact.component, precision="fp32", meta=meta,
                            main_file="saved_model")


def _keep_layout_inputs(iospec) -> list[str]:
    """Inputs of rank 3-5 that keep the IOSpec layout: only 4-D images become channel-last.

    A [B, C, T] or [B, T, D] sequence has no natural channel-last reading; transposing it would only move a
    transpose into the firmware.
    """
    return [s.name for s in iospec.inputs
            if 3 <= len(s.shape) <= 5 and not (s.modality == "image" and len(s.shape) == 4)]


def _channel_last(rank: int) -> list[int]:
    return [0, *range(2, rank), 1]


def _write_job(scratch: Path, onnx_path: Path, ctx: StageContext) -> dict:
    """The child's instructions, plus one real eval sample per input in the layout onnx2tf gives that input.

    onnx2tf checks its own conversion against onnxruntime on these samples (its default is all-ones inputs,
    meaningless for token ids or audio); the first image sample is also its sample-photo file.
    """
    import numpy as np

    sample = ctx.example_inputs()
    keep = _keep_layout_inputs(ctx.iospec)
    samples, photos = [], None
    for index, spec in enumerate(ctx.iospec.inputs):
        value = sample[spec.name]
        if 3 <= value.ndim <= 5 and spec.name not in keep:
            value = value.transpose(_channel_last(value.ndim))
        path = scratch / f"sample{index}.npy"
        np.save(path, np.ascontiguousarray(value))
        samples.append([spec.name, str(path)])
        if photos is None and value.ndim == 4:
            photos = np.ascontiguousarray(value).astype(np.float32)
    if photos is not None:
        np.save(scratch / ONNX2TF_SAMPLE_FILE, photos)
    return {"onnx": str(onnx_path), "out": str(scratch / "saved_model"), "signature": str(scratch / "signature.json"),
            "samples": samples, "keep_layout": keep, "pseudo_ops": list(PSEUDO_OPS)}


def input_layouts(signature: dict, iospec) -> dict:
    """IOSpec inputs whose SavedModel form differs (layout, dtype) -> {"perm", "layout", "shape", "dtype"}."""
    out = {}
    for spec in iospec.inputs:
        got = signature["inputs"].get(spec.name)
        if got is None:
            raise StageError(f"SavedModel has no input '{spec.name}'; its inputs are {sorted(signature['inputs'])}")
        shape, rank = list(got["shape"]), len(spec.shape)
        perm = _channel_last(rank) if 3 <= rank <= 5 else None
        if shape == list(spec.shape):
            perm = None
        elif perm is None or shape != [spec.shape[i] for i in perm]:
            raise StageError(f"input '{spec.name}' comes out of onnx2tf as {shape}, not {list(spec.shape)} "
                             "or its channel-last form")
        if perm is None and got["dtype"] == spec.dtype:
            continue
        layout = spec.layout[0] + spec.layout[2:] + spec.layout[1] if perm and len(spec.layout) == rank else spec.layout
        out[spec.name] = {"perm": perm, "layout": layout, "shape": shape, "dtype": got["dtype"]}
    return out


def _check_outputs(signature: dict, iospec) -> None:
    for spec in iospec.outputs:
        got = signature["outputs"].get(spec.name)
        if got is None:
            raise StageError(f"SavedModel has no output '{spec.name}'; its outputs are {sorted(signature['outputs'])}")
        if list(got["shape"]) != list(spec.shape):
            raise StageError(f"output '{spec.name}' comes out of onnx2tf as {got['shape']}, not {list(spec.shape)}; "
                             "output layouts are not converted back")

