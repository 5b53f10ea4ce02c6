"""Stages for the executor tests (imported by worker processes by their "module:Class" reference)."""
from __future__ import annotations

import json
import os
import signal
import time

from pipeline.stages import Stage


class Note(Stage):
    """Writes when it ran (and in which process) into its artifact; sleeps ctx.release['sleep_s'] seconds."""

    name = "note"
    produces = "torch"

    def run(self, artifact, ctx):
        start = time.monotonic()
        time.sleep(float(ctx.release.get("sleep_s", 0.0)))
        with ctx.progress.task("note", 2) as task:
            task.advance(2)
        (ctx.workdir / "note.json").write_text(json.dumps({"pid": os.getpid(), "start": start,
                                                           "end": time.monotonic()}))
        return ctx.artifact("torch", meta={"label": ctx.release.get("label", "")})


class Segfault(Stage):
    """Dies the way a native toolchain crash does."""

    name = "segfault"
    produces = "torch"

    def run(self, artifact, ctx):
        os.kill(os.getpid(), signal.SIGSEGV)


class Fails(Stage):
    name = "fails"
    produces = "torch"

    def run(self, artifact, ctx):
        from pipeline.errors import StageError

        raise StageError("converter said no")
