"""Command line: `edgepipe build|plan|verify|schema` -> exit code 0 ok, 1 a target or bundle failed, 2 bad input.

Errors from pipeline.errors print as one line; no traceback reaches the user unless EDGEPIPE_DEBUG=1.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ConfigError, EdgepipeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgepipe", description="Compress, export, calibrate, verify, profile and "
                                "bundle a multimodal PyTorch model for edge targets.")
    p.add_argument("--version", action="version", version=f"edgepipe {__version__}")
    _verbosity(p, 0)
    sub = p.add_subparsers(dest="command", required=True)
    subs = []
    for name, helptext in (("build", "run the whole pipeline and publish bundles"),
                           ("plan", "validate the config and print the plan; runs nothing and imports no model "
                                    "code (it only finds the factory's module; build imports and runs it)")):
        c = sub.add_parser(name, help=helptext)
        subs.append(c)
        c.add_argument("config", nargs="?", type=Path, help="release YAML (default: the built-in release)")
        c.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("EDGEPIPE_CACHE", ".edgepipe/cache")),
                       help="stage cache (default .edgepipe/cache or $EDGEPIPE_CACHE)")
        if name == "build":
            c.add_argument("--dist", type=Path, default=Path("dist"), help="output directory (default dist)")
            c.add_argument("--force", action="append", default=[], metavar="STAGE",
                           help="ignore the cache for this stage (repeatable), e.g. --force profile to re-measure")
            c.add_argument("--no-progress", action="store_true", help="no progress bars")
            c.add_argument("--jobs", "-j", type=_jobs, default=None, metavar="N",
                           help="stages run at once, each in a worker process (default: $EDGEPIPE_JOBS, else one "
                                "per core); 0 runs them in this process, one at a time")
    v = sub.add_parser("verify", help="re-hash a bundle against its manifest and run its golden vectors")
    subs.append(v)
    v.add_argument("bundle", type=Path, help="dist/<release>/<target>.tar.gz or its directory")
    v.add_argument("--no-golden", action="store_true", help="check hashes only")
    d = sub.add_parser("device", help="set up or inspect devices: emulators, the loopback SSH board, probes")
    dsub = d.add_subparsers(dest="device_command", required=True)
    ds = dsub.add_parser("setup", help="build or start a device this machine provides (e.g. qemu-arm64, "
                                       "ssh-loopback); idempotent")
    ds.add_argument("name", help="what to set up; `edgepipe device setup list` names them")
    ds.add_argument("--force", action="store_true", help="rebuild even when it exists")
    dp = dsub.add_parser("probe", help="read a target's device facts through its transport and print them")
    dp.add_argument("target", help="target profile name or path")
    subs += [ds, dp]
    s = sub.add_parser("schema", help="print the JSON Schema of release configs or target profiles")
    s.add_argument("which", choices=["release", "target"])
    for c in subs:  # also after the command: `edgepipe build -v`
        _verbosity(c, argparse.SUPPRESS)
    return p


def _verbosity(parser: argparse.ArgumentParser, default) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_const", const=1, default=default, dest="verbosity",
                      help="debug log lines of edgepipe and of the toolchains (nncf, onnxruntime, onnx2tf, tensorflow)")
    loud.add_argument("-q", "--quiet", action="store_const", const=-1, default=default, dest="verbosity",
                      help="errors only: no per-stage lines, no toolchain warnings")


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of jobs, got {text!r}") from None
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"jobs must be between 0 and 256, got {value}")
    return value


def default_jobs() -> int:
    """What it does: $EDGEPIPE_JOBS, else the cores this process may use -> the number of stage workers."""
    from .errors import ConfigError

    text = os.environ.get("EDGEPIPE_JOBS", "").strip()
    if text:
        try:
            return _jobs(text)
        except argparse.ArgumentTypeError as err:
            raise ConfigError(f"EDGEPIPE_JOBS: {err}") from None
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _console():
    from rich.console import Console

    # Wide tables in CI logs and pipes too (rich falls back to 80 columns there).
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)


def _check_dir_option(path: Path, option: str) -> None:
    """What it does: a directory option -> ConfigError when the path, or a folder above it, exists as something
    other than a directory (a build would fail on it after stages ran, or mid-publish)."""
    for part in (path, *path.parents):
        if part.is_dir():
            return
        if part.exists() or part.is_symlink():
            if part == path:
                raise ConfigError(f"{option} {path} exists and is not a directory; give a directory path "
                                  "(it is created when missing)")
            raise ConfigError(f"{option} {path}: {part} exists and is not a directory, so nothing can be created "
                              "under it; give a path under a directory")


def cmd_plan(args) -> int:
    from .config import load_release
    from .plan import make_plan

    _check_dir_option(args.cache_dir, "--cache-dir (or $EDGEPIPE_CACHE)")
    cfg, base = load_release(args.config)
    plan = make_plan(cfg, base)
    from rich.table import Table

    table = Table(title=f"plan for release {cfg.release} ({cfg.model.factory}, data {plan.dataset_dir})")
    for col in ("target", "format", "precision", "stages", "calibration", "transport"):
        table.add_column(col)
    for row in plan.rows():
        table.add_row(*row)
    _console().print(table)
    return 0


def cmd_build(args) -> int:
    from .cache import Cache
    from .config import load_release
    from .plan import make_plan
    from .progress import Progress
    from .publish import publish_release
    from .executor import make_executor
    from .report import print_stage_times, print_summary, stage_times, timeline
    from .runner import Runner

    start, started_at = time.perf_counter(), time.time()
    _check_dir_option(args.cache_dir, "--cache-dir (or $EDGEPIPE_CACHE)")
    _check_dir_option(args.dist, "--dist")
    console = _console()
    cfg, base = load_release(args.config)
    release_dir = args.dist / cfg.release
    if (release_dir.exists() or release_dir.is_symlink()) and not release_dir.is_dir():
        raise ConfigError(f"--dist {args.dist}: {release_dir} (the release's folder) exists and is not a directory; "
                          "move it away or give another --dist")
    plan = make_plan(cfg, base)
    progress = Progress(enabled=False if args.no_progress else None)
    jobs = default_jobs() if args.jobs is None else args.jobs
    log = (lambda m: None) if args.verbosity < 0 else (lambda m: console.print(m, markup=False))  # noqa: E731
    console.print(f"edgepipe build: release {cfg.release}, {len(plan.targets)} target(s), {jobs} job(s)")
    with make_executor(jobs, progress, log=log) as executor:
        runner = Runner(Cache(args.cache_dir), progress, log=log, force=tuple(args.force), executor=executor)
        state = runner.run(plan)
    times = stage_times(state.records)
    build = {"wall_s": round(time.perf_counter() - start, 2), "jobs": jobs, "stage_times": times,
             "timeline": timeline(state.records, started_at)}
    index = publish_release(state, args.dist, build=build, plot_memo=Path(args.cache_dir) / "_memo" / "plots")
    print_summary(console, index)
    wall = time.perf_counter() - start
    print_stage_times(console, times, wall, jobs)
    cached = sum(r.cached for r in state.records)
    console.print(f"{cached}/{len(state.records)} stages from cache; bundles in {args.dist / cfg.release}; "
                  f"wall time {wall:.1f} s")
    return 0 if all(t["status"] == "passed" for t in index["targets"]) else 1


def cmd_verify(args) -> int:
    from .bundle import verify_bundle

    report = verify_bundle(args.bundle, run_golden=not args.no_golden)
    golden = report.get("golden")
    extra = f", golden vectors {golden['passed']}/{golden['checked']} passed" if golden else ""
    print(f"OK {report['bundle']}: target {report['target']}, {report['files_checked']} files match the manifest"
          f"{extra}")
    return 0


def cmd_device(args) -> int:
    import json

    if args.device_command == "setup":
        from targets.setup import SETUPS, run_setup

        if args.name == "list":
            for name, (_, what) in sorted(SETUPS.items()):
                print(f"{name:<16} {what}")
            return 0
        print(json.dumps(run_setup(args.name, force=args.force), indent=2, sort_keys=True))
        return 0
    from .config import load_profile
    from .devices import device_facts

    profile = load_profile(args.target, Path.cwd())
    print(json.dumps(device_facts(profile, Path.cwd()).to_json(), indent=2, sort_keys=True))
    return 0


def cmd_schema(args) -> int:
    import json

    from .config import json_schemas

    print(json.dumps(json_schemas()[args.which], indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .logs import configure

    configure(args.verbosity)  # our logger and the toolchains' named loggers -> one console handler (stderr)
    handler = {"build": cmd_build, "plan": cmd_plan, "verify": cmd_verify, "schema": cmd_schema,
               "device": cmd_device}[args.command]
    try:
        return handler(args)
    except EdgepipeError as err:
        if os.environ.get("EDGEPIPE_DEBUG"):
            raise
        print(f"edgepipe: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("EDGEPIPE_DEBUG"):
            raise
        print(f"edgepipe: internal error: {type(err).__name__}: {err} (rerun with EDGEPIPE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("edgepipe: interrupted; finished stages stay cached, rerun to resume", file=sys.stderr)
        return 130
