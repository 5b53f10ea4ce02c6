"""Release configs and target profiles: YAML -> validated pydantic models (unknown keys rejected, every field described).

The profile models live in pipeline/target_config.py and are re-exported here. Light on purpose: pydantic + yaml
only, so `edgepipe plan` and `--help` never import a framework.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .configfile import parse, read_yaml
from .errors import ConfigError
from .target_config import (  # noqa: F401 (re-exported: pipeline.config names every config model)
    SEED_MAX, BenchmarkConfig, CalibrationConfig, Entry, FormatName, GatesConfig, OpsConfig, QuantizationConfig,
    SensitivityConfig, Strict, TargetProfile, TransportConfig, check_name)
from .formats import FORMAT_NAMES

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
PROFILES_DIR = REPO_ROOT / "targets" / "profiles"
DEFAULT_RELEASE = PACKAGE_ROOT / "defaults" / "release.yaml"
_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")  # checked with fullmatch: no trailing newline


# --------------------------------------------------------------------------- release config


class WeightRoundingConfig(Strict):
    method: Literal["adaround"] = Field("adaround", description="adaround: learn each weight's rounding direction "
                                        "from the layer's outputs on calibration inputs (Nagel et al., 2020)")
    objective: Literal["sampled", "exact"] = Field(
        "sampled", description="sampled: the output error on a random mini-batch (batch_size, crop) per step, as "
        "in the paper; exact: the output error over every calibration input, as a quadratic form in the weight "
        "change (Gram matrices of the layer's input patches, built once: a step costs no convolution; 3.2x faster "
        "on EfficientNet-Lite0, but on the default release it moved single eval photos both ways, see "
        "BENCHMARKS.md). Layers whose Gram matrices would exceed 64 Mi floats use sampled")
    iterations: int = Field(200, ge=1, le=100000, description="optimizer steps per layer")
    samples: int = Field(32, ge=1, le=4096, description="calibration samples whose layer inputs are used")
    batch_size: int = Field(8, ge=1, le=1024, description="objective sampled: samples per optimizer step")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate of the rounding variables (a few hundred "
                      "steps need a high rate: on a random 400-input layer, 200 steps cut the output MSE to 0.45x "
                      "of round-to-nearest at 0.1 and to 0.67x at 0.03)")
    crop: int = Field(56, ge=0, description="objective sampled, conv layers: random crop of the input map per step "
                                           "(0 = whole maps); bounds the cost of high-resolution layers")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the sample and crop draws (0 .. 2^32-1)")
    nodes: list[Entry] | None = Field(None, description="ONNX node-name prefixes of the layers to round (default: "
                                    "every Conv/Gemm/MatMul with a constant weight that is not kept float)")
    formats: list[FormatName] = Field(
        list(FORMAT_NAMES), min_length=1, description="the int8 formats whose chains round weights")


class ModelConfig(Strict):
    factory: str = Field(description="'module:attr' of a model factory (see pipeline/models/__init__.py)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword settings passed to the factory")
    dataset: str = Field(description="dataset directory: a name under calibration_data/ or a path")
    keep_float: list[Entry] = Field(
        default_factory=list,
        description="ONNX node-name prefixes of this model that stay float in every int8 format "
                    "(e.g. an in-graph log-mel front-end); added to each target's quantization.keep_float")
    keep_float_by_format: dict[FormatName, list[Entry]] = Field(
        default_factory=dict,
        description="extra keep_float entries for one format only (e.g. a transformer tower that TFLite's "
                    "int8 kernels cannot run); declared in the manifest like the others")
    kept_float_weights: Literal["float32", "int8"] = Field(
        "float32", description="int8 targets: the layers kept float (keep_float) store their constant weights as int8 "
                               "(weight-only, symmetric per output channel) and compute in float: ONNX "
                               "Conv/MatMul/Gemm via DequantizeLinear, OpenVINO via NNCF weight compression, LiteRT "
                               "FULLY_CONNECTED via DEQUANTIZE")
    weight_rounding: WeightRoundingConfig | None = Field(
        None, description="int8 targets: choose each weight's rounding (AdaRound) on calibration data before the "
                          "format's quantizer runs (it then keeps it); null = the toolchains' round-to-nearest")
    export: Literal["fused", "components", "both"] = Field(
        "fused", description="fused = one graph per target; components = one artifact chain per component of the "
                             "factory's components() (e.g. encoders + fusion head), verified per component and "
                             "end to end, in one bundle; both = the fused bundle plus a '<target>-components' bundle")

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, v: str) -> str:
        if not _FACTORY.fullmatch(v):
            raise ValueError("write it as 'package.module:Name'")
        return v


class OnnxExportConfig(Strict):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the exported graph")
    slim: bool = Field(True, description="simplify the graph with onnxslim when installed")


class ExportConfig(Strict):
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig, description="ONNX export settings")


class CompressionStep(Strict):
    """One torch -> torch compression step of the release's recipe (run in order, before every export)."""

    method: Literal["lowrank", "prune", "structured", "distill"] = Field(
        description="lowrank: truncated-SVD factorization of Linear/Conv layers; prune: unstructured magnitude "
        "pruning; structured: remove channels, hidden units and attention heads; distill: recover accuracy by "
        "knowledge distillation from the uncompressed fp32 model")
    energy: float | None = Field(None, gt=0, le=1, description="lowrank: keep this share of sum(S^2) per layer")
    rank: int | None = Field(None, ge=1, description="lowrank: the same rank for every chosen layer")
    param_ratio: float | None = Field(None, gt=0, lt=1, description="lowrank: factors hold at most this share of "
                                      "each layer's weights")
    min_cosine: float | None = Field(None, gt=0, le=1, description="lowrank: per-layer sensitivity scan on the "
                                     "calibration pool; each layer gets the smallest scanned rank whose model "
                                     "outputs keep this cosine to the unfactorized model's")
    samples: int = Field(64, ge=1, le=4096, description="lowrank min_cosine / structured taylor: calibration "
                         "samples the scan or the gradients use")
    sparsity: float | None = Field(None, ge=0, lt=1, description="prune: share of the chosen weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="prune/structured: one ranking over all chosen "
                                              "layers, or the same share per layer")
    ratio: float | None = Field(None, ge=0, lt=1, description="structured: share of channels removed per coupled "
                                "group (scope layer) or over all groups (scope global)")
    ratios: dict[Entry, float] = Field(default_factory=dict, description="structured: fnmatch layer pattern -> its "
                                     "own ratio in [0, 1)")
    floor: float = Field(0.1, gt=0, le=1, description="structured: every layer keeps at least this share of its "
                         "channels")
    heads: float = Field(0.0, ge=0, lt=1, description="structured: share of attention heads removed per block "
                         "(modules that declare edgepipe_attention)")
    importance: Literal["l1", "l2", "taylor"] = Field("l1", description="structured: channel/head importance "
                                                      "(taylor: |w * grad| on calibration samples, own top-1 as label)")
    round_to: int | None = Field(None, ge=1, description="structured: keep channel counts multiples of this")
    steps: int = Field(200, ge=1, le=100000, description="distill: optimizer steps")
    batch_size: int = Field(32, ge=1, le=4096, description="distill: mini-batch size")
    lr: float = Field(1e-3, gt=0, le=1, description="distill: peak AdamW learning rate (cosine decay)")
    temperature: float = Field(2.0, gt=0, description="distill: softmax temperature of the KL loss")
    label_weight: float = Field(0.0, ge=0, description="distill: weight of cross-entropy on the pool's labels "
                                "(samples labelled -1 are skipped)")
    augment: bool = Field(True, description="distill: label-preserving augmentation by modality")
    pool: list[Literal["calibration", "train"]] = Field(
        default_factory=lambda: ["calibration"], min_length=1, description="distill: dataset splits to learn from")
    layers: list[Entry] | None = Field(None, description="fnmatch patterns of module names to compress (default all)")
    skip: list[Entry] = Field(default_factory=list, description="fnmatch patterns of module names to leave alone")

    @model_validator(mode="after")
    def _settings_fit_method(self):
        rules = [k for k in ("energy", "rank", "param_ratio", "min_cosine") if getattr(self, k) is not None]
        if self.method == "lowrank" and (len(rules) != 1 or self.sparsity is not None):
            raise ValueError("lowrank needs exactly one of energy, rank, param_ratio, min_cosine (and no sparsity)")
        if self.method == "prune" and (self.sparsity is None or rules):
            raise ValueError("prune needs sparsity in [0, 1) (and no energy/rank/param_ratio/min_cosine)")
        structured = ("ratio", "ratios", "heads", "round_to")
        if self.method == "structured":
            if rules or self.sparsity is not None:
                raise ValueError("structured takes ratio/ratios/heads (not energy/rank/param_ratio/sparsity)")
            if not (self.ratio or self.ratios or self.heads):
                raise ValueError("structured needs ratio, ratios or heads above 0")
            for pattern, r in self.ratios.items():
                if not 0 <= r < 1:
                    raise ValueError(f"ratios['{pattern}'] must be in [0, 1) (1 would remove every channel), got {r}")
        elif any(k in self.model_fields_set for k in structured + ("floor", "importance")):
            raise ValueError("ratio/ratios/heads/floor/importance/round_to apply only to method structured")
        if "samples" in self.model_fields_set and self.min_cosine is None and not (
                self.method == "structured" and self.importance == "taylor"):
            raise ValueError("samples applies only to lowrank min_cosine and structured importance taylor")
        distill = ("steps", "batch_size", "lr", "temperature", "label_weight", "augment", "pool")
        if self.method == "distill":
            if rules or self.sparsity is not None or self.layers is not None or self.skip:
                raise ValueError("distill trains the whole compressed model; it takes steps, batch_size, lr, "
                                 "temperature, label_weight, augment, pool")
        elif any(k in self.model_fields_set for k in distill):
            raise ValueError(f"{', '.join(distill)} apply only to method distill")
        return self

    def label(self) -> str:
        """What it does: a step -> a short human label ("structured 0.5 + heads 0.5", "lowrank energy 0.9")."""
        if self.method == "lowrank":
            rule = next(k for k in ("energy", "rank", "param_ratio", "min_cosine") if getattr(self, k) is not None)
            return f"lowrank {rule} {getattr(self, rule)}"
        if self.method == "prune":
            return f"prune {self.sparsity}"
        if self.method == "structured":
            parts = [f"structured {self.ratio}" if self.ratio else "structured"] + \
                ([f"heads {self.heads}"] if self.heads else [])
            return " + ".join(parts)
        return f"distill {self.steps} steps"


class ReleaseConfig(Strict):
    release: str = Field(description="release name; bundles go to <dist>/<release>/")
    model: ModelConfig = Field(description="the model to deploy")
    targets: list[str] = Field(min_length=1, description="target profile names (targets/profiles/*.yaml) or paths")
    export: ExportConfig = Field(default_factory=ExportConfig, description="export settings shared by targets")
    profile: bool = Field(True, description="measure latency on each target (timings make bundles differ run to run)")
    golden_count: int = Field(4, ge=1, le=64, description="golden input/output vectors per bundle")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed for training and sampling (0 .. 2^32-1)")
    compression: list[CompressionStep] = Field(
        default_factory=list, description="torch -> torch compression recipe applied in order after the model "
        "is loaded and before every export (the fp32 reference stays the uncompressed model)")
    compression_study: dict[str, list[CompressionStep]] = Field(
        default_factory=dict, description="named recipes built side by side with the release in the same build "
        "(each through every fused target's export, verification and profile; no bundles): the release report's "
        "compression table, next to an implicit uncompressed 'baseline'")
    gates: dict[str, Any] = Field(
        default_factory=dict, description="verification gates of this model, over every target profile's gates "
        "(same keys as a profile's gates; e.g. a real model's logits cosine differs from a tiny model's)")

    @field_validator("gates")
    @classmethod
    def _gates(cls, v: dict) -> dict:
        GatesConfig.model_validate(v)  # same keys and ranges as a profile's gates
        return v

    @field_validator("release")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("compression_study")
    @classmethod
    def _study(cls, v: dict) -> dict:
        for name, steps in v.items():
            check_name(name.replace("+", "_"))
            if name == "baseline":
                raise ValueError("'baseline' is the implicit uncompressed row; name your recipe otherwise")
            if not steps:
                raise ValueError(f"recipe '{name}' is empty (the uncompressed baseline is always built)")
        return v


# --------------------------------------------------------------------------- loading


def load_release(path: Path | None) -> tuple[ReleaseConfig, Path]:
    """Read a release config (default: the built-in one); returns it and the directory paths are relative to."""
    path = Path(path) if path is not None else DEFAULT_RELEASE
    cfg = parse(ReleaseConfig, read_yaml(path), str(path))
    return cfg, path.resolve().parent


def resolve_profile_path(ref: str, base_dir: Path) -> Path:
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        return (base_dir / ref).resolve()
    return PROFILES_DIR / f"{ref}.yaml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(ref: str, base_dir: Path) -> TargetProfile:
    path = resolve_profile_path(ref, base_dir)
    if not path.is_file():
        known = available_profiles()
        close = difflib.get_close_matches(ref, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
        raise ConfigError(f"unknown target '{ref}' (no {path}); {hint}")
    profile = parse(TargetProfile, read_yaml(path), str(path))
    if path.parent == PROFILES_DIR and profile.name != path.stem:
        raise ConfigError(f"{path}: name '{profile.name}' must equal the file name '{path.stem}'")
    return profile


def resolve_dataset(cfg: ReleaseConfig, base_dir: Path) -> Path:
    ds = cfg.model.dataset
    if "/" in ds or ds.startswith("."):
        return (base_dir / ds).resolve()
    return REPO_ROOT / "calibration_data" / ds


def json_schemas() -> dict[str, dict]:
    return {"release": ReleaseConfig.model_json_schema(), "target": TargetProfile.model_json_schema()}
