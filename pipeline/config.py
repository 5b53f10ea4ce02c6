"""Release configs and target profiles: YAML -> validated pydantic models (unknown keys rejected, every field described).

Light on purpose: pydantic + yaml only, so `edgepipe plan` and `--help` never import a framework.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
PROFILES_DIR = REPO_ROOT / "targets" / "profiles"
DEFAULT_RELEASE = PACKAGE_ROOT / "defaults" / "release.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError("use 1-64 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit)")
    return value


# --------------------------------------------------------------------------- target profiles


class SensitivityConfig(_Strict):
    enabled: bool = Field(
        False, description="rank the layers by the fidelity int8 costs them (int8 simulated at one ONNX node at a "
                           "time on calibration samples); when a gate fails, keep the worst ones float (declared "
                           "in the manifest and the report)")
    max_float_layers: int = Field(
        4, ge=1, le=64, description="at most this many layers kept float automatically; the fewest that make the "
                                    "gates pass are kept (tried 1, 2, 4, ... then narrowed)")
    samples: int = Field(
        32, ge=2, le=1024, description="calibration samples (the first of the target's calibration subset) the "
                                       "ranking measures on; never eval samples")


# QuantizationConfig fields added after cache keys existed, with their defaults (see stage_settings)
_LATER_SETTINGS = {"activations": "static", "blockwise": []}


class QuantizationConfig(_Strict):
    per_channel: bool = Field(True, description="per-output-channel weight scales (per-tensor breaks EfficientNet)")
    symmetric_weights: bool = Field(True, description="symmetric int8 weights (zero-point 0)")
    symmetric_activations: bool = Field(False, description="symmetric int8 activations")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="activation integer type")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="weight integer type")
    op_types: list[str] | None = Field(None, description="ONNX op types to quantize; null = the toolchain's set")
    keep_float: list[str] = Field(
        default_factory=list, description="node-name prefixes (or ONNX op types) that stay in float; recorded in the manifest"
    )
    preset: Literal["performance", "mixed"] = Field(
        "mixed", description="OpenVINO/NNCF preset: symmetric (performance) or asymmetric activations (mixed)")
    model_type: Literal["transformer"] | None = Field(
        None, description="NNCF model_type; 'transformer' keeps attention-sensitive ops out of int8")
    bias_correction: Literal["fast", "full", "none"] = Field(
        "fast", description="NNCF bias correction after quantization")
    overflow_fix: Literal["first_layer", "enable", "disable"] = Field(
        "first_layer", description="NNCF overflow fix: 7-bit weights (first layer / every layer) so that CPUs "
                                   "without VNNI cannot saturate u8*s8 sums; 'disable' = full 8-bit weights, for "
                                   "CPUs with VNNI/AMX only")
    activations: Literal["static", "dynamic"] = Field(
        "static", description="static = activation ranges calibrated ahead of time (every format); dynamic = weights "
                              "int8 ahead of time, activations quantized per input at run time (ONNX Runtime "
                              "MatMulInteger, LiteRT dynamic-range kernels), no calibration: for transformers whose "
                              "activation ranges vary from input to input. OpenVINO: static only")
    blockwise: list[str] = Field(
        default_factory=list,
        description="ONNX with activations: dynamic: node-name prefixes of MatMuls whose weights are int8 in blocks "
                    "of 128 inputs (onnxruntime MatMulNBits, 8 bit, int8 compute) instead of per output channel, "
                    "for inputs with outlier channels (a transformer's FFN down-projection)")
    io_dtype: Literal["float32", "int8", "uint8"] = Field(
        "float32", description="TFLite int8: dtype of float model inputs/outputs (int8 writes scale/zero-point)")
    sensitivity: SensitivityConfig = Field(
        default_factory=SensitivityConfig,
        description="automatic sensitivity pass: names the layers that cost the most fidelity and can keep the "
                    "worst of them float when a gate fails")

    def stage_settings(self) -> dict:
        """What it does: the settings that change a quantizer's output (for stage cache keys): all but the
        sensitivity pass, whose choices reach the quantizers as keep_float entries."""
        settings = self.model_dump(exclude={"sensitivity"})
        for name, default in _LATER_SETTINGS.items():  # at their defaults they stay out: earlier cache keys hold
            if settings[name] == default:
                settings.pop(name)
        return settings

    @model_validator(mode="after")
    def _blockwise_is_dynamic(self):
        if self.blockwise and self.activations != "dynamic":
            raise ValueError("quantization.blockwise applies to activations: dynamic only")
        return self


class CalibrationConfig(_Strict):
    method: Literal["minmax", "entropy", "percentile", "toolchain_default"] = Field(
        "minmax", description="range estimation method; toolchain_default = the quantizer's own default "
                              "(used for baselines: NNCF averages per-sample ranges, ORT uses MinMax)")
    samples: int = Field(256, ge=1, description="calibration samples drawn from the calibration split")
    seed: int = Field(0, description="seed of the calibration subset draw")
    percentile: float = Field(99.999, gt=90, le=100, description="percentile for method=percentile")
    min_samples: int = Field(32, ge=1, description="refuse calibration sets smaller than this")


class BenchmarkConfig(_Strict):
    threads: int = Field(1, ge=1, le=256, description="runtime threads (set explicitly in every runtime)")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    iterations: int = Field(100, ge=1, description="timed runs")
    timeout_s: float = Field(300.0, gt=0, description="wall-clock limit for one agent run")


class GatesConfig(_Strict):
    max_accuracy_drop_pt: float = Field(1.0, ge=0, description="fail if eval accuracy drops more than this (points)")
    min_agreement: float | None = Field(None, ge=0, le=1, description="fail if top-1 agreement with fp32 is below")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="fail if mean output cosine with fp32 is below")
    golden_atol: float = Field(1e-4, ge=0, description="abs tolerance of the on-device golden-vector self-test")
    golden_rtol: float = Field(1e-3, ge=0, description="rel tolerance of the on-device golden-vector self-test")


class OpsConfig(_Strict):
    allowed: list[str] | None = Field(
        None, description="op types (fnmatch patterns) the target runs; any other op fails the target")
    denied: list[str] = Field(
        default_factory=list, description="op types (fnmatch patterns, e.g. 'Flex*') that fail the target")


class TransportConfig(_Strict):
    kind: Literal["local"] = Field("local", description="how the device is reached (ssh/adb/qemu come later)")


class TargetProfile(_Strict):
    name: str = Field(description="profile name; the file is targets/profiles/<name>.yaml")
    description: str = Field("", description="one line for humans")
    format: Literal["onnx", "openvino", "tflite"] = Field(description="artifact format")
    precision: Literal["fp32", "fp16", "int8"] = Field(description="weights/activations precision")
    runtime: Literal["onnxruntime", "openvino", "litert"] = Field(
        "onnxruntime", description="runtime that loads the artifact (must fit the format)")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig, description="int8 settings")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="int8 calibration")
    transport: TransportConfig = Field(default_factory=TransportConfig, description="how to reach the device")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig, description="latency measurement")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="verification gates")
    ops: OpsConfig = Field(default_factory=OpsConfig, description="op allow/deny lists checked on the artifact")

    @model_validator(mode="after")
    def _runtime_fits(self):
        fits = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert"}
        if fits[self.format] != self.runtime:
            raise ValueError(f"runtime '{self.runtime}' cannot load format '{self.format}'; use '{fits[self.format]}'")
        return self

    @model_validator(mode="after")
    def _dynamic_fits(self):
        q = self.quantization
        if q.activations == "dynamic" and self.format == "openvino":
            raise ValueError("quantization.activations 'dynamic' is not available for openvino (NNCF quantizes "
                             "activations statically); use 'static'")
        if q.blockwise and self.format != "onnx":
            raise ValueError(f"quantization.blockwise is an onnxruntime scheme; format '{self.format}' has none")
        if q.activations == "dynamic" and q.sensitivity.enabled:
            raise ValueError("quantization.sensitivity ranks static int8 layers; it does not apply to "
                             "activations: dynamic")
        return self

    @model_validator(mode="after")
    def _sensitivity_fits(self):
        sens = self.quantization.sensitivity
        if sens.enabled and self.precision != "int8":
            raise ValueError(f"quantization.sensitivity.enabled applies to int8 targets only, this one is "
                             f"{self.precision}")
        if sens.enabled and sens.samples > self.calibration.samples:
            raise ValueError(f"quantization.sensitivity.samples={sens.samples} exceeds calibration.samples="
                             f"{self.calibration.samples} (the ranking measures on the calibration subset)")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)


# --------------------------------------------------------------------------- release config


class WeightRoundingConfig(_Strict):
    method: Literal["adaround"] = Field("adaround", description="adaround: learn each weight's rounding direction "
                                        "from the layer's outputs on calibration inputs (Nagel et al., 2020)")
    iterations: int = Field(200, ge=1, le=100000, description="optimizer steps per layer")
    samples: int = Field(32, ge=1, le=4096, description="calibration samples whose layer inputs are used")
    batch_size: int = Field(8, ge=1, le=1024, description="samples per optimizer step")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate of the rounding variables (a few hundred "
                      "steps need a high rate: on a random 400-input layer, 200 steps cut the output MSE to 0.45x "
                      "of round-to-nearest at 0.1 and to 0.67x at 0.03)")
    crop: int = Field(56, ge=0, description="conv layers: random crop of the input feature map per step "
                                           "(0 = whole maps); bounds the cost of high-resolution layers")
    seed: int = Field(0, description="seed of the sample and crop draws")
    nodes: list[str] | None = Field(None, description="ONNX node-name prefixes of the layers to round (default: "
                                    "every Conv/Gemm/MatMul with a constant weight that is not kept float)")
    formats: list[Literal["onnx", "openvino", "tflite"]] = Field(
        ["onnx", "openvino", "tflite"], min_length=1, description="the int8 formats whose chains round weights")


class ModelConfig(_Strict):
    factory: str = Field(description="'module:attr' of a model factory (see pipeline/models/__init__.py)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword settings passed to the factory")
    dataset: str = Field(description="dataset directory: a name under calibration_data/ or a path")
    keep_float: list[str] = Field(
        default_factory=list,
        description="ONNX node-name prefixes of this model that stay float in every int8 format "
                    "(e.g. an in-graph log-mel front-end); added to each target's quantization.keep_float")
    keep_float_by_format: dict[Literal["onnx", "openvino", "tflite"], list[str]] = Field(
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
        if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError("write it as 'package.module:Name'")
        return v


class OnnxExportConfig(_Strict):
    opset: int = Field(17, ge=13, le=21, description="ONNX opset of the exported graph")
    slim: bool = Field(True, description="simplify the graph with onnxslim when installed")


class ExportConfig(_Strict):
    onnx: OnnxExportConfig = Field(default_factory=OnnxExportConfig, description="ONNX export settings")


class CompressionStep(_Strict):
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
    ratios: dict[str, float] = Field(default_factory=dict, description="structured: fnmatch layer pattern -> its "
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
    layers: list[str] | None = Field(None, description="fnmatch patterns of module names to compress (default all)")
    skip: list[str] = Field(default_factory=list, description="fnmatch patterns of module names to leave alone")

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


class ReleaseConfig(_Strict):
    release: str = Field(description="release name; bundles go to <dist>/<release>/")
    model: ModelConfig = Field(description="the model to deploy")
    targets: list[str] = Field(min_length=1, description="target profile names (targets/profiles/*.yaml) or paths")
    export: ExportConfig = Field(default_factory=ExportConfig, description="export settings shared by targets")
    profile: bool = Field(True, description="measure latency on each target (timings make bundles differ run to run)")
    golden_count: int = Field(4, ge=1, le=64, description="golden input/output vectors per bundle")
    seed: int = Field(0, description="seed for training and sampling")
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
        return _check_name(v)

    @field_validator("compression_study")
    @classmethod
    def _study(cls, v: dict) -> dict:
        for name, steps in v.items():
            _check_name(name.replace("+", "_"))
            if name == "baseline":
                raise ValueError("'baseline' is the implicit uncompressed row; name your recipe otherwise")
            if not steps:
                raise ValueError(f"recipe '{name}' is empty (the uncompressed baseline is always built)")
        return v


# --------------------------------------------------------------------------- loading


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """Names allowed at `loc` (walks nested models) — for 'did you mean'."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        fld = current.model_fields.get(part)
        if fld is None:
            return []
        current = fld.annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    # An unknown key usually explains the "missing" error beside it (a typo), so report it first.
    errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = tuple(first["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = _field_names(model, loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
        msg = f"{source}: unknown key '{path}'{hint}"
    else:
        msg = f"{source}: {path}: {first['msg']}"
    more = len(errors) - 1
    return msg + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def parse(model: type[BaseModel], data: dict, source: str):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from err


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
