"""SavedModel -> TFLite fp32/fp16 (convert_tflite), plus what every TFLite stage shares: the converter call with
one-line failures, and writing, inspecting and smoke-running the converted file.

The converters and the smoke run work in a toolchain child process (pipeline/export/child.py): TensorFlow reads
its log level from the environment at import, and its calibrator and LiteRT's delegate print from C++ straight to
fd 1/2; in the child, that output goes to the stage's log file. tensorflow and the LiteRT interpreter are imported
there only.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from ...artifact import Artifact
from ...errors import StageError
from ...stages import Stage, StageContext
from ..child import run_stage_child, stage_job
from .flatbuffer import _refuse_flex, inspect_tflite, model_facts

# The TFLite children's environment only: TensorFlow's C++ log level (INFO lines out, warnings into the log file).
TFLITE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "1"}


def _import_tf():
    """The child's TensorFlow import (its C++ log level comes from the child's environment, TFLITE_ENV)."""
    import tensorflow as tf

    return tf


def converter_message(err: BaseException) -> str:
    """One line from a TFLiteConverter failure: the Flex ops it needs, else the first MLIR error, else line one."""
    text = str(err)
    flex = re.search(r"TF Select ops: ([^\n]+)", text)
    if flex:
        return f"needs TensorFlow (Flex) ops {flex.group(1).strip()}, which the LiteRT builtin runtime cannot run"
    for line in text.splitlines():
        if "error:" in line:
            message = line.split("error:", 1)[1].rsplit(")): ", 1)[-1].strip()
            if message:
                return message[:300]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _convert(build, what: str) -> bytes:
    """Run `build()` (a converter call); any failure -> StageError naming `what` and the reason."""
    with warnings.catch_warnings():
        # The calibrator still goes through tf.lite.Interpreter, which warns that it is deprecated.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        try:
            return build()
        except StageError:
            raise
        except Exception as err:
            raise StageError(f"{what} failed: {converter_message(err)}") from err



def _smoke_run(path: Path, artifact: Artifact, ctx: StageContext):
    """Load the file in the runtime the device uses and run one eval sample; returns the session."""
    from targets.agent import open_model

    from ...verify import adapt_sample

    try:
        session = open_model(str(path), "tflite", 1)
        session.run(adapt_sample(ctx.example_inputs(), artifact))
    except Exception as err:
        lines = str(err).splitlines() or [type(err).__name__]
        raise StageError(f"the converted model does not run in the LiteRT interpreter: {lines[0][:300]}") from err
    return session


def _write_tflite(buf: bytes, ctx: StageContext, source: Artifact) -> tuple[Path, dict, object]:
    """Write model.tflite (only after conversion succeeded), check its ops and run it once."""
    path = ctx.workdir / "model.tflite"
    path.write_bytes(buf)
    graph = inspect_tflite(buf)
    facts = model_facts(graph, buf)
    _refuse_flex(facts["ops"])
    session = _smoke_run(path, source, ctx)
    facts["inputs"] = [d.as_dict() for d in session.input_details]
    facts["outputs"] = [d.as_dict() for d in session.output_details]
    return path, dict(facts, graph=graph), session


class ConvertTflite(Stage):
    name = "convert_tflite"
    version = 1
    consumes = ("savedmodel",)
    produces = "tflite"
    requires = ("tensorflow", "ai_edge_litert")
    extra = "tflite"

    def config(self, ctx: StageContext) -> dict:
        return {"precision": ctx.target.precision}

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        precision = ctx.target.precision
        if precision not in ("fp32", "fp16"):
            raise StageError(f"convert_tflite makes fp32 or fp16 models, not {precision} (int8 is quantize_tflite)")
        meta = run_stage_child("pipeline.export.tflite.convert:convert_in_child", artifact, ctx,
                               what=f"TFLiteConverter ({precision})", log_name="tflite", env=TFLITE_ENV)
        return ctx.artifact("tflite", component=artifact.component, precision=precision, meta=meta,
                            main_file="model.tflite")


def convert_in_child(job, progress) -> dict:
    """Child side of convert_tflite: (SavedModel artifact, ctx) -> model.tflite in ctx.workdir; returns its meta."""
    artifact, ctx = stage_job(job, progress)
    tf = _import_tf()
    precision = ctx.target.precision

    def build() -> bytes:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(artifact.main_file))
        if precision == "fp16":  # fp16 weights, dequantized to fp32 at load; activations stay fp32
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()

    buf = _convert(build, f"TFLiteConverter ({precision})")
    _, facts, _ = _write_tflite(buf, ctx, artifact)
    facts.pop("graph")
    return dict(facts, input_layouts=artifact.meta.get("input_layouts") or {},
                signature=artifact.meta.get("signature"))
