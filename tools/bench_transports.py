"""What SSH costs beside the host: the same agent profile run (push model + golden + agent, N timed runs, close)
through the local transport and through the loopback SSH board, side by side -> a BENCHMARKS.md section, plus the
fault figures (hung commands killed on the board, hostile names and arguments).

    python tools/bench_transports.py [--bundle dist/<release>/<target>] [--iterations 200] [--repeats 5]
                                     [--kills 20] [--out BENCHMARKS.md]

Without --bundle a small ONNX MLP is made here (its golden outputs from onnxruntime). The loopback sshd is set up
in a temporary $XDG_CACHE_HOME and stopped at the end; nothing of it stays on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.errors import TransportError  # noqa: E402
from targets.transport import AGENT_REMOTE_NAME, AGENT_SOURCE, run_agent  # noqa: E402
from tools.bench_formats import cpu_model, write_section  # noqa: E402

MARKS = ("<!-- bench_transports:start -->", "<!-- bench_transports:end -->")
HOSTILE_NAMES = ["a; touch pwned", "$(touch pwned)", "`touch pwned`", "../x", "/etc/passwd", "a/../../x", "-rf",
                 "a/-b", "", "a//b", "model.onnx\n", "a\n/b", "a b", "ü.onnx", "x\x00y", "'q'", '"q"', "a|b",
                 "a&b", "--help", "~/x", "*", "$HOME", "a>b"]
HOSTILE_WORDS = ["$(touch pwned)", "a; touch pwned", "`touch pwned`", "x'y\"z", "-n", "new\nline", "ünï", "*", "~",
                 "a\\b", "&& touch pwned", "| touch pwned", "> pwned", "${HOME}", "\t", " ", "--", "-rf /"]


def make_model(folder: Path) -> tuple[Path, Path]:
    """A 3-layer MLP (256 wide) in ONNX and its golden vectors (outputs from onnxruntime) -> (model, golden dir)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from targets import agent

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate([(128, 256), (256, 256), (256, 10)]):
        inits += [numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32) * 0.1, f"w{i}"),
                  numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}")]
        out = "y" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out + ("" if i == 2 else "_pre")]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        prev = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = folder / "mlp.onnx"
    onnx.save(model, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xs = [rng.standard_normal((1, 128)).astype(np.float32) for _ in range(4)]
    ys = [{"y": session.run(None, {"x": x})[0]} for x in xs]
    return path, agent.write_golden(folder / "golden", [{"x": x} for x in xs], ys, atol=1e-4, rtol=1e-3)


def one_profile(make, model: Path, golden: Path, fmt: str, iterations: int) -> dict:
    """Open a transport, push model + golden + agent, run the agent once, close -> seconds per step."""
    t0 = time.perf_counter()
    transport = make()
    t1 = time.perf_counter()
    with transport:
        remote_model = transport.push(model, f"model/{model.name}")
        remote_golden = transport.push(golden, "golden")
        transport.agent_remote = transport.push(AGENT_SOURCE, AGENT_REMOTE_NAME)
        t2 = time.perf_counter()
        result = run_agent(transport, ["--model", remote_model, "--format", fmt, "--threads", "1", "--warmup", "20",
                                       "--iterations", str(iterations), "--golden", remote_golden], 600, threads=1)
        t3 = time.perf_counter()
    t4 = time.perf_counter()
    runs_s = sum(result["samples_ms"]) / 1000
    return {"open": t1 - t0, "push": t2 - t1, "agent": t3 - t2, "close": t4 - t3, "total": t4 - t0,
            "runs": runs_s, "beyond_runs": (t4 - t0) - runs_s, "p50_ms": result["latency_ms"]["p50"],
            "load_ms": result["load_ms"]}


def count(pattern: str) -> int:
    return len(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split())


def faults(make_ssh, kills: int, scratch: Path) -> dict:
    """Hung commands killed at a 1 s timeout (processes left on the board), hostile names and arguments."""
    left, timed_out = 0, 0
    with make_ssh() as board:
        sessions = []
        for _ in range(10):  # one command = one ssh session over the open connection (login shell included)
            t0 = time.perf_counter()
            board.run(["true"], 30)
            sessions.append(time.perf_counter() - t0)
        for k in range(kills):
            mark = f"{700 + k}.{os.getpid()}"
            try:
                board.run(["sh", "-c", 'sleep "$1" & sleep "$1"; wait', "hang", mark], timeout_s=1)
            except TransportError:
                timed_out += 1
            deadline = time.monotonic() + 10
            while count(mark) and time.monotonic() < deadline:
                time.sleep(0.1)
            left += count(mark)
        src = scratch / "f.txt"
        src.write_text("x")
        refused = 0
        for name in HOSTILE_NAMES:
            try:
                board.push(src, name)
            except TransportError:
                refused += 1
        out = board.run([board.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *HOSTILE_WORDS], 60)
        literal = sum(a == b for a, b in zip(json.loads(out.stdout), HOSTILE_WORDS))
        listing = board.run(["ls", "-A"], 30).stdout.split()
    injected = sum(p.exists() for p in (scratch / "pwned", Path.home() / "pwned", Path("/tmp/pwned")))
    return {"session_s": statistics.median(sessions), "kills": kills, "timed_out": timed_out, "left": left, "names": len(HOSTILE_NAMES), "refused": refused,
            "words": len(HOSTILE_WORDS), "literal": literal, "files_in_run_dir": len(listing), "injected": injected}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a built bundle folder (model.onnx or model.tflite + golden/)")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args()
    from targets.ssh_loopback import setup_loopback, stop_loopback
    from targets.transports.local import LocalTransport
    from targets.transports.ssh import SshTransport

    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-ssh-") as tmp:
        tmp = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")  # this tool's own process: a private loopback board
        record = setup_loopback()
        try:
            if args.bundle:
                model = next(p for p in sorted(args.bundle.iterdir()) if p.suffix in (".onnx", ".tflite"))
                golden, what = args.bundle / "golden", (
                    f"bundle `{args.bundle.name}` ({model.name}, built by `edgepipe build` before this run: the "
                    "tiny example, examples/tiny-mm.yaml, with `targets: [ssh-loopback-onnx-int8]`)")
            else:
                model, golden = make_model(tmp)
                what = "a 3-layer ONNX MLP (128-256-256-10, fp32) made by the tool"
            fmt = "onnx" if model.suffix == ".onnx" else "tflite"
            makers = {"local": LocalTransport,
                      "ssh": lambda: SshTransport(**{k: record[k] for k in ("host", "port", "user", "identity_file",
                                                                            "known_hosts", "python")})}
            rows = {k: [] for k in makers}
            for r in range(args.repeats):  # alternate, so machine load hits both alike
                for kind in (list(makers) if r % 2 == 0 else list(makers)[::-1]):
                    rows[kind].append(one_profile(makers[kind], model, golden, fmt, args.iterations))
            fault = faults(makers["ssh"], args.kills, tmp)
        finally:
            stop_loopback()
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in rows.items()}
    extra = med["ssh"]["beyond_runs"] - med["local"]["beyond_runs"]
    lines = [
        "## SSH transport overhead vs local, same agent profile run (`tools/bench_transports.py`)", "",
        f"`python tools/bench_transports.py{' --bundle ' + str(args.bundle) if args.bundle else ''} --iterations "
        f"{args.iterations} --repeats {args.repeats} --kills {args.kills}` on {cpu_model()} "
        f"({os.cpu_count()} cores, shared with other jobs), Python {platform.python_version()}; {what}; 20 warm-up + "
        f"{args.iterations} timed runs, 1 thread; medians of {args.repeats} alternating repeats; the SSH board is "
        "this machine's own sshd on 127.0.0.1 (one ControlMaster connection per transport).", "",
        "| step (s, median) | local | ssh | ssh / local |", "|---|---|---|---|"]
    for field, label in (("open", "open (connect + run dir)"), ("push", "push model + golden + agent (ssh: queued, sent with the run)"),
                         ("agent", "agent run (load + warm-up + timed runs)"), ("close", "close (remove run dir)"),
                         ("total", "total"), ("runs", "the timed runs themselves"),
                         ("beyond_runs", "everything beyond the timed runs"), ("p50_ms", "p50 per run (ms)"),
                         ("load_ms", "model load (ms)")):
        a, b = med["local"][field], med["ssh"][field]
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {b / a:.2f}× |" if a else f"| {label} | {a:.3f} | {b:.3f} | - |")
    lines += ["", f"**SSH adds {extra:.2f} s per target beyond the runs themselves** (goal: ≤ 1 s): "
              "`beyond_runs(ssh) - beyond_runs(local)`. One command over the open connection costs "
              f"{fault['session_s']:.3f} s here (median of 10 `true` runs); most of it is the board's login shell "
              "starting (sshd runs every command through it; on this machine root's ~/.bashrc runs `pyenv init`), "
              "which is why pushes travel with the next command instead of in sessions of their own.", "",
              f"Faults over the real sshd: {fault['kills']} hung commands (each starting a grandchild) killed at a "
              f"1 s timeout: {fault['timed_out']} timed out, **{fault['left']} processes left** on the board. "
              f"{fault['names']} hostile remote names: {fault['refused']} refused; {fault['words']} hostile argv "
              f"words: {fault['literal']} arrived literally; **{fault['injected']} commands injected**, "
              f"{fault['files_in_run_dir']} files written in the run dir."]
    body = "\n".join(lines)
    print(body)
    write_section(args.out, body, MARKS)


if __name__ == "__main__":
    main()
