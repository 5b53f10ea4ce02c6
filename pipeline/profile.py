"""Latency profiling: model artifact + its golden vectors -> agent measurements on the target's transport.

The host goes through the same path as a device: push the agent, the model and the golden vectors, run the
agent with explicit threads, read its one JSON line.
"""
from __future__ import annotations

import json

from .artifact import Artifact, sha256_file
from .errors import StageError, TransportError
from .stages import Stage, StageContext
from .formats import FORMAT_OF_KIND, MODEL_KINDS


def agent_path():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "targets" / "agent.py"


class Profile(Stage):
    name = "profile"
    version = 1
    consumes = MODEL_KINDS
    produces = "profile"
    requires = ("numpy",)
    extra = ""

    def config(self, ctx: StageContext) -> dict:
        cfg = {"benchmark": ctx.target.benchmark.model_dump(), "transport": ctx.target.transport.model_dump(),
               "runtime": ctx.target.runtime, "agent": sha256_file(agent_path()),
               "golden": ctx.deps["verification"].sha256}
        if ctx.component != "model":  # only then: fused profiles keep their cache key
            cfg["component"] = ctx.component
        if ctx.device is not None:  # a measurement belongs to the device it was taken on
            cfg["device"] = ctx.device.identity(ctx.target.runtime)
        if ctx.target.runtime_options:
            cfg["runtime_options"] = dict(sorted(ctx.target.runtime_options.items()))
        if ctx.target.verify_on_device:
            cfg["verify_on_device"] = ctx.target.verify_on_device
        return cfg

    def run(self, artifact: Artifact | None, ctx: StageContext) -> Artifact:
        from targets.transport import run_agent

        from .devices import open_transport

        b = ctx.target.benchmark
        # a components verification holds one golden dir per component
        verification = ctx.deps["verification"]
        golden = verification.path("golden" if ctx.component == "model" else f"golden/{ctx.component}")
        check_set = verification.root / "on_device" / ctx.component
        on_device = ctx.target.verify_on_device > 0 and (check_set / "inputs.npz").is_file()
        try:
            with open_transport(ctx.target.transport, ctx.base_dir) as transport:
                model_dir = transport.push(artifact.root, "model")
                golden_dir = transport.push(golden, "golden")
                model_file = f"{model_dir}/{artifact.meta['main_file']}"
                args = ["--model", model_file, "--format", FORMAT_OF_KIND[artifact.kind], "--threads", str(b.threads),
                        "--warmup", str(b.warmup), "--iterations", str(b.iterations), "--golden", golden_dir,
                        "--op-profile", str(b.op_profile_runs)]
                if on_device:
                    args += ["--eval-inputs", transport.push(check_set / "inputs.npz", "eval_inputs.npz"),
                             "--eval-outputs", "eval_outputs.npz"]
                for key, value in sorted(ctx.target.runtime_options.items()):
                    args += ["--option", f"{key}={value}"]
                with ctx.progress.task(f"profile {ctx.target.name} ({b.iterations} runs)", None):
                    result = run_agent(transport, args, timeout_s=b.timeout_s, threads=b.threads)
                if on_device and "eval" not in result:  # e.g. a phone without Python: its benchmark tool ran
                    raise StageError(f"verify_on_device: {ctx.target.transport.kind} device ran no agent here "
                                     f"({result.get('measured_by', 'no Python')}); set verify_on_device: 0")
                if on_device:
                    transport.pull(result["eval"]["file"], ctx.workdir / "device_outputs.npz")
        except TransportError as err:
            raise StageError(f"profiling on {ctx.target.transport.kind} failed: {err}") from err
        golden_result = result.get("golden", {})
        if golden_result.get("passed") != golden_result.get("checked"):
            fails = golden_result.get("failures") or ["?"]
            raise StageError(f"golden self-test failed on {ctx.target.transport.kind}: {fails[0]}")
        result["transport"] = ctx.target.transport.kind
        if ctx.device is not None:
            result["device"] = ctx.device.to_json()
        if on_device:
            result["on_device_verification"] = self._check_on_device(ctx, check_set, result.pop("eval"))
        (ctx.workdir / "profile.json").write_text(json.dumps(result, indent=1, sort_keys=True))
        return ctx.artifact("profile", component=artifact.component, precision=artifact.precision, meta=result)

    @staticmethod
    def _check_on_device(ctx: StageContext, check_set, evaluated: dict) -> dict:
        """What it does: the device's outputs on the check set -> compare_on_device's record, with the target's
        gates applied to the device's figures (a gate failure there fails the target)."""
        import numpy as np

        from .device_check import compare_on_device, stack, summary_line
        from .verify import gate_failures

        names, count = list(evaluated["outputs"]), int(evaluated["samples"])
        try:
            device = stack(ctx.workdir / "device_outputs.npz", names, count)
        except (OSError, ValueError) as err:
            raise StageError(f"device outputs for on-device verification are unreadable: {err}") from err
        host = stack(check_set / "host.npz", names, count)
        with np.load(check_set / "reference.npz", allow_pickle=False) as data:
            reference = {o: np.asarray(data[o]) for o in names}
        labels_file = check_set / "labels.npy"
        labels = np.load(labels_file, allow_pickle=False) if labels_file.is_file() else None
        ref_acc = ctx.deps["verification"].meta.get("reference_accuracy")
        record = compare_on_device(device, host, reference, labels, ref_acc, names[0])
        gates = ctx.target.gates
        fails = gate_failures(record["on_device"], gates.model_copy(update={"max_accuracy_drop_pt": float("inf")}))
        record["gate_failures"] = fails
        record["summary"] = summary_line(record)
        (ctx.workdir / "device_outputs.npz").unlink()
        if fails:
            raise StageError(f"on-device verification ({count} eval samples): {fails[0]}")
        return record
