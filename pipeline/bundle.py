"""Bundles: a target's verified artifact + results -> dist/<release>/<target>/ and a deterministic .tar.gz.

Publishing is atomic (staging dir, then rename); archives have sorted entries and fixed mtime/uid/gid/mode, so
the same inputs give the same bytes. `verify_bundle` re-hashes every file against the manifest, accepts only
regular files the manifest lists, and runs the golden vectors.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .artifact import sha256_file, sha256_json
from .errors import BundleError
from .formats import MODEL_SUFFIXES

SCHEMA_VERSION = 1
FIXED_MTIME = 0


def git_commit(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _iospec_for_artifact(iospec, meta: dict) -> dict:
    """The IOSpec as this artifact takes it: quantization scale/zero-point and any changed layout/shape/dtype."""
    spec = iospec.model_dump(mode="json")
    io_quant = meta.get("io_quantization", {})
    layouts = meta.get("input_layouts") or {}
    for group in ("inputs", "outputs"):
        for tensor in spec[group]:
            tensor["quantization"] = io_quant.get(tensor["name"])
            qdtype = (tensor["quantization"] or {}).get("dtype")
            if qdtype in ("int8", "uint8") and meta.get("io_dtype") in ("int8", "uint8"):
                tensor["dtype"] = qdtype  # the model itself takes/returns integers (TFLite int8 I/O)
            change = layouts.get(tensor["name"]) if group == "inputs" else None
            if change:
                tensor.update({k: change[k] for k in ("layout", "shape", "dtype") if k in change})
                tensor["transpose_from_source"] = change.get("perm")
    return spec


def _step_summary(step: dict) -> dict:
    """What it does: one applied recipe step -> its manifest entry (settings + what changed, not per-layer rows)."""
    out = {k: v for k, v in step.items() if k != "layers"}
    report = step.get("layers")
    if step["method"] == "structured":
        out["layers_changed"] = len(report["layers"])
        out["heads_kept"] = {b: len(h["heads_kept"]) for b, h in report["heads"].items()}
    elif step["method"] == "distill":
        out["training"] = report
    else:
        out["layers_changed"] = sum(1 for r in report or [] if r.get("rank") or r.get("zeros"))
    return out


def _compression(result) -> dict:
    """What it does: a target result -> the manifest's compression section from its compressed torch artifact."""
    lineages = [result.lineage] + [c["lineage"] for c in (getattr(result, "components", None) or {}).values()]
    for lineage in lineages:
        for art in lineage or []:
            summary = art.meta.get("compression")
            if summary:
                keys = ("parameters_before", "parameters", "zero_parameters", "macs_before", "macs")
                return {"applied": [_step_summary(step) for step in summary["steps"]],
                        **{k: summary[k] for k in keys if k in summary}}
    return {"applied": []}


def _lineage(arts) -> list[dict]:
    return [{"stage": a.stage, "kind": a.kind, "precision": a.precision, "sha256": a.sha256,
             "parents": list(a.parents)} for a in arts]


def components_manifest(ctx: dict, files: dict[str, dict]) -> dict:
    """What it does: a components-mode target -> the manifest's "components" section: per component its model
    files, IOSpec as the artifact takes it, wiring (feeds_from), lineage, golden dir and latency."""
    from .iospec import IOSpec

    result, wiring = ctx["result"], ctx["components"]
    out = {}
    for name, c in result.components.items():
        model = c["model"]
        spec = IOSpec.model_validate(wiring["iospecs"][name])
        out[name] = {"model_files": sorted(f for f in files if f.startswith(f"{name}/") and f.endswith(MODEL_SUFFIXES)),
                     "main_file": f"{name}/{model.meta['main_file']}",
                     "iospec": _iospec_for_artifact(spec, model.meta), "feeds_from": wiring["feeds_from"].get(name, {}),
                     "side": name not in wiring["order"],
                     "sha256": model.sha256, "ops": model.meta.get("ops", {}), "lineage": _lineage(c["lineage"]),
                     "kept_float_nodes": model.meta.get("kept_float_nodes", []), "golden": f"golden/{name}",
                     "quantization": c.get("quantization"),
                     "weight_rounding": weight_rounding(c["lineage"]),
                     "latency": c["profile"].meta if c.get("profile") is not None else None}
    return {"order": wiring["order"], "parts": out,
            "calibration_inputs": "encoders: the calibration samples; later components: the fp32 torch "
                                  "components' outputs on them"}


def manifest_for(ctx: dict, files: dict[str, dict]) -> dict:
    """The manifest: everything firmware and release engineers need to know about one bundle."""
    result = ctx["result"]
    if getattr(result, "components", None):
        return _components_manifest_for(ctx, files)
    return _fused_manifest_for(ctx, files)


def _components_manifest_for(ctx: dict, files: dict[str, dict]) -> dict:
    """What it does: a components-mode target -> the manifest (fused layout, plus "components"; "model" and
    "iospec" describe the chain as a whole)."""
    result, profile = ctx["result"], ctx["profile"]
    tools = {"python": sys.version.split()[0], "edgepipe": ctx["edgepipe_version"]}
    for c in result.components.values():
        for art in c["lineage"]:
            tools.update(art.tool_versions)
    tools.update(result.verification.tool_versions)
    ver = dict(result.verification.meta)
    tools[ver["runtime"]["name"]] = ver["runtime"]["version"]
    first = next(iter(result.components.values()))["model"]
    return {
        "schema_version": SCHEMA_VERSION, "release": ctx["release"].release, "target": ctx["name"],
        "format": profile.format, "precision": first.precision, "runtime": profile.runtime,
        "git_commit": ctx["git_commit"], "config_hash": ctx["config_hash"],
        "calibration_fingerprint": result.calibration_fingerprint, "tool_versions": dict(sorted(tools.items())),
        "files": files, "export": "components",
        "model_files": sorted(f for f in files if f.endswith(MODEL_SUFFIXES)),
        "iospec": ctx["iospec"].model_dump(mode="json"),
        "preprocessing_assets": sorted(f for f in files if f.startswith("assets/")),
        "quantization": ({"settings": profile.quantization.stage_settings(),
                          "calibration": profile.calibration.model_dump()} if first.precision == "int8" else None),
        "compression": _compression(result),
        "components": components_manifest(ctx, files),
        "verification": ver, "latency": result.latency(),
        "golden": {"dir": "golden", "atol": profile.gates.golden_atol, "rtol": profile.gates.golden_rtol},
        "device": _device(result),
        "device_settings": list(getattr(result, "device_settings", None) or []),
        "runtime_options": dict(sorted(profile.runtime_options.items())),
    }


def _fused_manifest_for(ctx: dict, files: dict[str, dict]) -> dict:
    """What it does: a fused target -> its manifest (unchanged layout)."""
    result, profile = ctx["result"], ctx["profile"]
    model = result.model
    lineage = [{"stage": a.stage, "kind": a.kind, "precision": a.precision, "sha256": a.sha256,
                "parents": list(a.parents)} for a in result.lineage]
    tools = {"python": sys.version.split()[0], "edgepipe": ctx["edgepipe_version"]}
    for art in result.lineage + [result.verification]:
        tools.update(art.tool_versions)
    ver = dict(result.verification.meta)
    tools[ver["runtime"]["name"]] = ver["runtime"]["version"]
    return {
        "schema_version": SCHEMA_VERSION,
        "release": ctx["release"].release,
        "target": profile.name,
        "format": profile.format,
        "precision": model.precision,
        "runtime": profile.runtime,
        "git_commit": ctx["git_commit"],
        "config_hash": ctx["config_hash"],
        "calibration_fingerprint": result.calibration_fingerprint,
        "tool_versions": dict(sorted(tools.items())),
        "files": files,
        "model_files": sorted(f for f in files if f.endswith(MODEL_SUFFIXES)),
        "iospec": _iospec_for_artifact(ctx["iospec"], model.meta),
        "preprocessing_assets": sorted(f for f in files if f.startswith("assets/")),
        "quantization": _quantization_manifest(profile, model, result),
        "compression": _compression(result),
        "model": {"sha256": model.sha256, "ops": model.meta.get("ops", {}), "lineage": lineage},
        "verification": ver,
        "latency": result.profile.meta if result.profile is not None else None,
        "golden": {"dir": "golden", "atol": profile.gates.golden_atol, "rtol": profile.gates.golden_rtol},
        "device": _device(result),
        "device_settings": list(getattr(result, "device_settings", None) or []),
        "runtime_options": dict(sorted(profile.runtime_options.items())),
    }


def _device(result) -> dict | None:
    """What it does: a target result -> the manifest's device section: the facts read from the device (or
    declared) that its int8 settings and measurements belong to."""
    facts = getattr(result, "device", None)
    return facts.to_json() if facts is not None else None


def weight_rounding(lineage) -> dict | None:
    """What it does: an artifact lineage -> the round_weights stage's summary (method, layers, samples,
    iterations, median/worst output-MSE ratio against round-to-nearest), or None when the chain has none."""
    for art in lineage or []:
        if art.stage == "round_weights" and "weight_rounding" in art.meta:  # (absent: nothing to round, passed on)
            return {k: v for k, v in art.meta["weight_rounding"].items() if k != "per_layer"}
    return None


def _quantization_manifest(profile, model, result) -> dict | None:
    """What it does: a fused int8 target -> the manifest's "quantization" section: the nodes kept float, the
    settings, the calibration and, with the sensitivity pass on, the layers it kept float and why ("sensitivity":
    ranking, the gates before, every attempt, the metrics after; its timing stays out, bundles stay reproducible)."""
    if model.precision != "int8":
        return None
    out = {"kept_float_nodes": model.meta.get("kept_float_nodes", []),
           "settings": profile.quantization.stage_settings(), "calibration": profile.calibration.model_dump()}
    rounding = weight_rounding(result.lineage)
    if rounding is not None:
        out["weight_rounding"] = rounding
    if "weight_only_int8_nodes" in model.meta:  # onnx: which kept-float layers store int8 weights
        out["weight_only_int8_nodes"] = model.meta["weight_only_int8_nodes"]
    if model.meta.get("weight_only_int8_tensors"):  # tflite: which kept-float FC weights are stored int8
        out["weight_only_int8_tensors"] = model.meta["weight_only_int8_tensors"]
    if "kept_float_weights" in model.meta:  # openvino: how the kept-float layers' weights are stored
        out["kept_float_weights"] = model.meta["kept_float_weights"]
    sens = getattr(result, "sensitivity", None)
    if sens is not None:
        out["auto_keep_float"] = list(sens["auto_keep_float"])
        out["sensitivity"] = {k: v for k, v in sens.items() if k != "seconds"}
    return out


@dataclass
class BundlePlan:
    """What a bundle holds before any byte is written: files copied from cache entries (their sha256 known from
    the entry), generated files, the manifest. Comparing plans is how a rebuild knows a bundle did not change."""

    sources: dict[str, Path] = field(default_factory=dict)  # bundle path -> cache file
    blobs: dict[str, bytes] = field(default_factory=dict)  # bundle path -> generated content
    files: dict[str, dict] = field(default_factory=dict)  # bundle path -> {"sha256", "size_bytes"}
    manifest: dict = field(default_factory=dict)

    @property
    def manifest_bytes(self) -> bytes:
        return (json.dumps(self.manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def add_artifact(self, art, prefix: str, subdir: str = "") -> None:
        """Every file of a cache artifact (or of one of its sub-directories) under `prefix` in the bundle."""
        for rel, sha in sorted(art.files.items()):
            if subdir and not rel.startswith(subdir + "/"):
                continue
            name = (prefix + "/" if prefix else "") + (rel[len(subdir) + 1:] if subdir else rel)
            self.sources[name] = art.path(rel)
            self.files[name] = {"sha256": sha, "size_bytes": art.path(rel).stat().st_size}

    def add_blob(self, name: str, data: bytes) -> None:
        self.blobs[name] = data
        self.files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}

    def materialize(self, staging: Path) -> None:
        for name, src in sorted(self.sources.items()):
            out = staging / name
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
        for name, data in sorted(self.blobs.items()):
            out = staging / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
        (staging / "manifest.json").write_bytes(self.manifest_bytes)


def plan_bundle(ctx: dict) -> BundlePlan:
    """What it does: one target's results -> its BundlePlan (model files, golden vectors, assets, README, manifest)."""
    from .iospec import IOSpec, TokenizerPreprocessing
    from .latency_report import latency_md, latency_png, profile_parts
    from .report import bundle_readme

    plan = BundlePlan()
    result = ctx["result"]
    if getattr(result, "components", None):  # one subdirectory per component, each holding that component's model files
        for name, c in result.components.items():
            plan.add_artifact(c["model"], name)
    else:
        plan.add_artifact(result.model, "")
    plan.add_artifact(result.verification, "golden", subdir="golden")
    specs = list(ctx["iospec"].inputs)
    if getattr(result, "components", None) and ctx.get("components"):
        specs += [s for n in result.components for s in IOSpec.model_validate(ctx["components"]["iospecs"][n]).inputs]
    for spec in specs:
        if isinstance(spec.preprocessing, TokenizerPreprocessing):
            vocab = Path(spec.preprocessing.vocab_file)
            plan.add_blob(f"assets/{vocab.name}", (ctx["dataset_dir"] / vocab).read_bytes())
    torch_model = ctx.get("torch_model")
    if torch_model is not None and any(f.startswith("assets/") for f in torch_model.files):  # prompts, ...
        plan.add_artifact(torch_model, "assets", subdir="assets")
    if ctx["iospec"].labels:
        plan.add_blob("assets/labels.txt", ("\n".join(ctx["iospec"].labels) + "\n").encode("utf-8"))
    parts = profile_parts(result)
    if parts:  # the on-device latency report beside the bundle
        png = _memo_png(ctx.get("plot_memo"), ctx["name"], parts, latency_png)
        if png is not None:
            plan.add_blob("latency.png", png)
        plan.add_blob("latency.md", latency_md(ctx["name"], _device(result), parts,
                                               "latency.png" if png is not None else None).encode("utf-8"))
    plan.add_blob("README.md", bundle_readme(manifest_for(ctx, {})).encode("utf-8"))
    plan.files = dict(sorted(plan.files.items()))
    plan.manifest = manifest_for(ctx, plan.files)
    return plan


def _memo_png(memo_dir, name: str, parts: dict, render) -> bytes | None:
    """What it does: a latency picture, rendered once per content: keyed by the target name, its records (the
    per-run samples included) and matplotlib's version, kept in the cache's _memo/plots (a warm rebuild re-renders
    nothing: 12 pictures cost ~7 s of matplotlib)."""
    if memo_dir is None:
        return render(name, parts)
    import hashlib
    from importlib import metadata

    key = hashlib.sha256(json.dumps([name, parts, metadata.version("matplotlib")], sort_keys=True,
                                    default=str).encode()).hexdigest()
    path = Path(memo_dir) / f"{key}.png"
    if path.is_file():
        return path.read_bytes()
    png = render(name, parts)
    if png is not None:
        Path(memo_dir).mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_bytes(png)
        os.replace(tmp, path)
    return png


def stage_bundle(staging: Path, ctx: dict) -> dict:
    """Fill `staging` with the bundle of one target; returns its manifest."""
    plan = plan_bundle(ctx)
    plan.materialize(staging)
    return plan.manifest


def write_tar(src: Path, out: Path, root_name: str) -> None:
    """Deterministic tar.gz of src under root_name/: sorted entries, mtime 0, uid/gid 0, fixed modes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = sorted(p for p in src.rglob("*"))
        dirs = sorted({p.relative_to(src).parent for p in entries if p.is_file()} - {Path(".")})
        for d in [Path(".")] + dirs:
            info = tarfile.TarInfo(str(PurePosixPath(root_name) / d.as_posix()) if d != Path(".") else root_name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
            tar.addfile(info)
        for path in entries:
            if not path.is_file():
                continue
            info = tarfile.TarInfo(f"{root_name}/{path.relative_to(src).as_posix()}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    tmp = out.with_name(f".tmp-{out.name}")
    # level 6, not 9: on the smart-camera bundles (float/int8 weights) 9 saves 0.15 % of bytes at twice the time
    # (42 MiB tar: 34.46 vs 34.41 MiB, 1.3 vs 2.8 s); the archive stays byte-deterministic either way.
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_MTIME, compresslevel=6) as gz:
            gz.write(buf.getvalue())
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, out)


def publish(staging: Path, final: Path) -> None:
    """Swap a finished staging dir into place: readers see the old bundle or the new one, never half."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_bundle(release_dir: Path, target: str) -> None:
    shutil.rmtree(release_dir / target, ignore_errors=True)
    (release_dir / f"{target}.tar.gz").unlink(missing_ok=True)
    (release_dir / f".{target}.published.json").unlink(missing_ok=True)


def config_hash(release, profile) -> str:
    """Hash of the settings of one bundle; model.export is left out when it is the default so that fused bundles
    stay byte-identical to those built before the field existed."""
    exclude = {"model": {"export"}} if release.model.export == "fused" else None
    # likewise quantization.sensitivity while it is off (it changes nothing then)
    off = None if profile.quantization.sensitivity.enabled else {"quantization": {"sensitivity"}}
    return sha256_json({"release": release.model_dump(mode="json", exclude=exclude),
                        "target": profile.model_dump(mode="json", exclude=off)})


# --------------------------------------------------------------------------- verification of a bundle


def _safe_member_name(name: str, root: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] != root:
        raise BundleError(f"archive member '{name}' is outside the bundle directory '{root}/'")
    return PurePosixPath(*p.parts[1:]).as_posix() if len(p.parts) > 1 else ""


def _extract_checked(archive: Path, dest: Path) -> Path:
    """Extract only regular files listed in the archive's manifest; returns the bundle dir."""
    try:
        tar = tarfile.open(archive, "r:gz")
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{archive}: not a readable .tar.gz ({err})") from err
    with tar:
        members = tar.getmembers()
        if not members:
            raise BundleError(f"{archive}: empty archive")
        root = PurePosixPath(members[0].name).parts[0]
        manifest_member = next((m for m in members if m.name == f"{root}/manifest.json"), None)
        if manifest_member is None or not manifest_member.isreg():
            raise BundleError(f"{archive}: no regular file {root}/manifest.json")
        manifest = json.loads(tar.extractfile(manifest_member).read())
        listed = set(manifest.get("files", {})) | {"manifest.json"}
        out = dest / root
        for m in members:
            rel = _safe_member_name(m.name, root)
            if m.isdir():
                continue
            if not m.isreg():
                raise BundleError(f"archive member '{m.name}' is not a regular file")
            if rel not in listed:
                raise BundleError(f"archive member '{m.name}' is not listed in the manifest")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return out


def check_files(bundle: Path) -> dict:
    manifest_path = bundle / "manifest.json"
    if not manifest_path.is_file():
        raise BundleError(f"{bundle}: no manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_path}: not valid JSON ({err})") from err
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema_version {manifest.get('schema_version')} is not {SCHEMA_VERSION}")
    files = manifest["files"]
    present = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file() or p.is_symlink()}
    extra = sorted(present - set(files) - {"manifest.json"})
    if extra:
        raise BundleError(f"{bundle}: file '{extra[0]}' is not listed in the manifest")
    for name, entry in sorted(files.items()):
        path = bundle / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"{bundle}: listed file '{name}' is missing or not a regular file")
        if path.stat().st_size != entry["size_bytes"] or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"{bundle}: '{name}' does not match its sha256/size in the manifest")
    return manifest


def verify_bundle(path: Path, run_golden: bool = True) -> dict:
    """Re-hash a bundle (dir or .tar.gz) against its manifest and run its golden vectors; raises BundleError."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="edgepipe-verify-") as tmp:
        bundle = _extract_checked(path, Path(tmp)) if path.is_file() else path
        manifest = check_files(bundle)
        report = {"bundle": str(path), "target": manifest["target"], "files_checked": len(manifest["files"])}
        if run_golden:
            report["golden"] = run_golden_vectors(bundle, manifest)
    return report


def run_golden_vectors(bundle: Path, manifest: dict) -> dict:
    """What it does: a bundle dir + manifest -> golden check report; a components bundle checks each component's
    model file against its own golden dir and reports the totals and each part."""
    if manifest.get("components"):
        parts = {name: _golden_of(bundle, part["main_file"], manifest["format"], part["golden"],
                                  manifest.get("runtime_options"))
                 for name, part in manifest["components"]["parts"].items()}
        return {"checked": sum(p["checked"] for p in parts.values()),
                "passed": sum(p["passed"] for p in parts.values()), "components": parts}
    model_file = next((f for f in manifest["model_files"] if not f.endswith(".bin")), None)
    if model_file is None:
        raise BundleError(f"{bundle}: the manifest lists no model file")
    return _golden_of(bundle, model_file, manifest["format"], "golden", manifest.get("runtime_options"))


def _golden_of(bundle: Path, model_file: str, fmt: str, golden_dir: str, options: dict | None = None) -> dict:
    """What it does: one model file + its golden dir in a bundle -> check_golden report; BundleError on failure."""
    from targets.agent import check_golden, load_golden, open_model

    try:
        session = open_model(str(bundle / model_file), fmt, 1, options or None)
        result = check_golden(session, load_golden(str(bundle / golden_dir)))
    except BundleError:
        raise
    except Exception as err:
        raise BundleError(f"{bundle}: golden vectors could not run: {str(err).splitlines()[0]}") from err
    if result["passed"] != result["checked"]:
        raise BundleError(f"{bundle}: golden vectors failed: {result['failures'][0]}")
    return result
