"""ONNX fp32 artifact -> SavedModel (export_savedmodel): onnx2tf in a child process (onnx2tf_child.py), the input
layouts it chose and the ONNX names it kept.

onnx2tf runs in a child process (`python -m pipeline.export.tflite.onnx2tf_child JOB`) with its own working
directory: it writes scratch files into its cwd, fetches sample photos from the internet for image-only models,
prints a banner and calls sys.exit on errors; none of that may reach the build. Image inputs come out NHWC (a
camera's own layout, and measured faster than keeping NCHW, which costs a TRANSPOSE op in the graph); the change is
declared in meta["input_layouts"] so that verify, the golden vectors and the manifest feed and describe that layout.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ...artifact import Artifact
from ...errors import StageError
from ...stages import Stage, StageContext

# ONNX ops onnx2tf rebuilds from TFLite builtins: plain onnx2tf emits FlexErf, which LiteRT refuses to run.
PSEUDO_OPS = ("Erf",)
ONNX2TF_TIMEOUT_S = 3600
_PACKAGE_PARENT = Path(__file__).resolve().parents[3]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHILD = "pipeline.export.tflite.onnx2tf_child"


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
            _run_onnx2tf(job, scratch, artifact.main_file.name)
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


def _write_job(scratch: Path, onnx_path: Path, ctx: StageContext) -> Path:
    """The child's instructions, plus one real eval sample per input in the layout onnx2tf gives that input.

    onnx2tf checks its own conversion against onnxruntime on these samples (its default is all-ones inputs,
    meaningless for token ids or audio).
    """
    import numpy as np

    sample = ctx.example_inputs()
    keep = _keep_layout_inputs(ctx.iospec)
    samples = []
    for index, spec in enumerate(ctx.iospec.inputs):
        value = sample[spec.name]
        if 3 <= value.ndim <= 5 and spec.name not in keep:
            value = value.transpose(_channel_last(value.ndim))
        path = scratch / f"sample{index}.npy"
        np.save(path, np.ascontiguousarray(value))
        samples.append([spec.name, str(path)])
    job = {"onnx": str(onnx_path), "out": str(scratch / "saved_model"), "signature": str(scratch / "signature.json"),
           "samples": samples, "keep_layout": keep, "pseudo_ops": list(PSEUDO_OPS)}
    path = scratch / "job.json"
    path.write_text(json.dumps(job), encoding="utf-8")
    return path


def _run_onnx2tf(job: Path, scratch: Path, onnx_name: str) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-m", _CHILD, str(job)], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise StageError(f"onnx2tf did not finish {onnx_name} within {ONNX2TF_TIMEOUT_S} s") from err
    if proc.returncode != 0 or not (scratch / "signature.json").is_file():
        raise StageError(f"onnx2tf failed on {onnx_name}: {last_error_line(proc.stdout + proc.stderr)}")


def last_error_line(text: str) -> str:
    """The most telling line of a tool's output: the last one naming an error, else the last one."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln for ln in lines if re.search(r"error|exception", ln, re.IGNORECASE)]
    line = (errors or lines or ["no output"])[-1]
    return line if len(line) <= 300 else line[:297] + "..."


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

