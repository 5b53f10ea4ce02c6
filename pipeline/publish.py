"""Release publishing: finished BuildState -> dist/<release>/{<target>/, <target>.tar.gz, index.json, report.html,
release.resolved.yaml}. Only passed targets get a bundle; a failed target's old bundle is removed."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from . import __version__
from .bundle import (MODEL_SUFFIXES, config_hash, git_commit, plan_bundle, publish, remove_bundle, write_json,
                     write_tar)
from .config import REPO_ROOT
from .latency_report import profile_parts
from .report import report_html
from .runner import BuildState


def model_size_bytes(art) -> int:
    """Bytes of every model file of an artifact (an OpenVINO IR is its .xml and its .bin)."""
    return sum(art.path(f).stat().st_size for f in art.files if f.endswith(MODEL_SUFFIXES))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def resolved_config(state: BuildState) -> dict:
    return {"release": state.plan.release.model_dump(mode="json"),
            "targets": {tp.name: tp.profile.model_dump(mode="json") for tp in state.plan.targets},
            "dataset_dir": str(state.plan.dataset_dir)}


def study_index(state: BuildState) -> list[dict]:
    """What it does: state.study -> one index entry per recipe: parameters, MACs (the baseline's from any recipe's
    'before'), and per target its status, size, verification metrics and p50 latency."""
    summaries = [e["compression"] for e in state.study.values() if e["compression"]]
    out = []
    for vname, e in state.study.items():
        comp = e["compression"]
        params = comp["parameters"] if comp else (summaries[0]["parameters_before"] if summaries else None)
        macs = comp.get("macs") if comp else (summaries[0].get("macs_before") if summaries else None)
        targets = {}
        for tname, r in e["results"].items():
            ver = r.verification.meta if r.verification else {}
            lat = (r.latency() or {}).get("latency_ms") or {}
            targets[tname] = {"format": r.plan.profile.format, "precision": r.plan.profile.precision,
                              "status": r.status, "reasons": r.reasons,
                              "size_bytes": model_size_bytes(r.model) if r.model is not None else None,
                              "accuracy": ver.get("accuracy"), "accuracy_drop_pt": ver.get("accuracy_drop_pt"),
                              "agreement": ver.get("agreement"), "p50_ms": lat.get("p50")}
        distill = [s["layers"] for s in (comp or {}).get("steps", []) if s["method"] == "distill"]
        out.append({"recipe": vname, "steps": e["recipe"], "parameters": params, "macs": macs,
                    "zero_parameters": comp.get("zero_parameters") if comp else 0,
                    "distill": distill[-1] if distill else None, "targets": targets})
    return out


def _stamp_path(release_dir: Path, name: str) -> Path:
    return release_dir / f".{name}.published.json"


def _published_state(release_dir: Path, name: str) -> dict:
    """What it does: a published bundle -> sizes and mtimes of its directory's files and of its archive."""
    root = release_dir / name
    files = {p.relative_to(root).as_posix(): [p.stat().st_size, p.stat().st_mtime_ns]
             for p in sorted(root.rglob("*")) if p.is_file()}
    tar = (release_dir / f"{name}.tar.gz").stat()
    return {"files": files, "tar": [tar.st_size, tar.st_mtime_ns]}


def _unchanged(release_dir: Path, name: str, plan) -> str | None:
    """What it does: a target's new BundlePlan -> the archive's sha256 when the published bundle (directory and
    archive) is what this plan would write and nobody touched it since (sizes and mtimes as recorded when it
    was published), else None."""
    try:
        stamp = json.loads(_stamp_path(release_dir, name).read_text())
        if stamp["manifest_sha256"] != hashlib.sha256(plan.manifest_bytes).hexdigest():
            return None
        if _published_state(release_dir, name) != stamp["state"]:
            return None
        return stamp["tar_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def publish_bundle(release_dir: Path, name: str, plan) -> str:
    """What it does: a BundlePlan -> dist/<release>/<name>/ and <name>.tar.gz, each swapped in atomically; an
    unchanged bundle is left as it is (a warm rebuild re-writes nothing). Returns the archive's sha256."""
    from .artifact import sha256_file

    same = _unchanged(release_dir, name, plan)
    if same is not None:
        return same
    _stamp_path(release_dir, name).unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=release_dir))
    try:
        plan.materialize(staging)
        staging.chmod(0o755)  # mkdtemp makes it private; a bundle is for others to read
        write_tar(staging, release_dir / f"{name}.tar.gz", name)
        publish(staging, release_dir / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    tar_sha = sha256_file(release_dir / f"{name}.tar.gz")
    stamp = {"manifest_sha256": hashlib.sha256(plan.manifest_bytes).hexdigest(), "tar_sha256": tar_sha,
             "state": _published_state(release_dir, name)}
    _atomic_text(_stamp_path(release_dir, name), json.dumps(stamp, sort_keys=True))
    return tar_sha


def publish_release(state: BuildState, dist: Path, build: dict | None = None, plot_memo: Path | None = None) -> dict:
    """Write every passed target's bundle and the release index/report; returns the index. `build`: how the
    build went (wall time, jobs, per-stage times) for index.json and the report; `plot_memo`: a folder where
    rendered latency pictures are kept by content (the cache's _memo/plots)."""
    release = state.plan.release
    release_dir = Path(dist) / release.release
    release_dir.mkdir(parents=True, exist_ok=True)
    commit = git_commit(REPO_ROOT)
    entries, to_publish = [], []
    for result in state.targets:
        profile, name = result.plan.profile, result.plan.name
        entry = {"target": name, "format": profile.format, "precision": profile.precision,
                 "status": result.status, "reasons": result.reasons,
                 "verification": result.verification.meta if result.verification else None,
                 "latency_ms": (result.latency() or {}).get("latency_ms"),
                 "model_size_bytes": sum(model_size_bytes(a) for a in result.models().values()) or None}
        if result.sensitivity is not None:
            entry["sensitivity"] = result.sensitivity
        if result.device is not None:
            entry["device"] = result.device.to_json()
        if getattr(result, "device_settings", None):
            entry["device_settings"] = list(result.device_settings)
        if profile.runtime_options:
            entry["runtime_options"] = dict(sorted(profile.runtime_options.items()))
        parts = profile_parts(result)
        if parts:  # per-run samples stay in the bundles' latency.png / manifests
            entry["latency_parts"] = {n: {k: v for k, v in r.items() if k != "samples_ms"} for n, r in parts.items()}
        if result.status == "passed":
            ctx = {"release": release, "profile": profile, "result": result, "iospec": state.iospec,
                   "dataset_dir": state.plan.dataset_dir, "git_commit": commit,
                   "config_hash": config_hash(release, profile), "edgepipe_version": __version__, "name": name,
                   "components": state.component_wiring, "torch_model": state.torch_model, "plot_memo": plot_memo}
            entry["bundle"] = f"{name}.tar.gz"
            to_publish.append((entry, name, plan_bundle(ctx)))  # planned here: plots render in this thread only
        else:
            remove_bundle(release_dir, name)
        entries.append(entry)
    # Writing, archiving (zlib) and hashing release the GIL: bundles are written side by side, one per build job.
    workers = max(1, min(len(to_publish), int((build or {}).get("jobs") or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgepipe-publish") as pool:
        shas = [pool.submit(publish_bundle, release_dir, name, plan) for _, name, plan in to_publish]
    for (entry, _, _), sha in zip(to_publish, shas):
        entry["bundle_sha256"] = sha.result()
    index = {"schema_version": 1, "release": release.release, "git_commit": commit,
             "model": release.model.model_dump(mode="json"),
             "reference_accuracy": state.reference.meta.get("accuracy"),
             "eval_samples": state.reference.meta.get("samples"), "targets": entries,
             "stages": sorted(({"stage": r.stage, "target": r.target, "cached": r.cached, "sha256": r.sha256}
                               for r in state.records), key=lambda r: (r["target"], r["stage"], r["sha256"]))}
    if build is not None:
        index["build"] = build
    if state.study:
        index["compression_study"] = study_index(state)
    _atomic_text(release_dir / "release.resolved.yaml", yaml.safe_dump(resolved_config(state), sort_keys=True))
    _atomic_text(release_dir / "report.html", report_html(index))
    tmp = release_dir / ".tmp-index.json"
    write_json(tmp, index)
    os.replace(tmp, release_dir / "index.json")
    return index
