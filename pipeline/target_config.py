"""Target profiles: targets/profiles/<name>.yaml -> a validated TargetProfile (unknown keys rejected, every field
described), plus the field rules release configs share (strict models, names, seeds, keep_float-like entries).

Light on purpose: pydantic only (pipeline/config.py loads the files).
"""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from .formats import FORMAT_NAMES, FORMATS, RUNTIMES

# Checked with fullmatch: `$` would also match before a trailing newline ("tiny\n" -> dist/tiny\n/).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,127}")
# numpy's and torch's generators both take every seed in 0 .. 2**32 - 1 (numpy refuses negative ones)
SEED_MAX = 2**32 - 1


class Strict(BaseModel):
    # .inf / .nan are no setting (an infinite timeout overflows the clock, a NaN compares false everywhere)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r}: use 1-64 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit; "
                         "no spaces or newlines)")
    return value


def _not_blank(entry: str) -> str:
    if not entry.strip():
        raise ValueError("an empty or blank entry names nothing (as a prefix it would match every node); "
                         "remove it or write the node, layer or op it means")
    return entry


# One entry of a keep_float-like list: a node-name prefix, an op type or an fnmatch pattern; never blank.
Entry = Annotated[str, AfterValidator(_not_blank), WithJsonSchema({"type": "string", "pattern": r"\S"})]


class SensitivityConfig(Strict):
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


# The registry's names as pydantic choices (pipeline/formats.py): a format added there is a valid choice here.
FormatName = Literal[FORMAT_NAMES]
RuntimeName = Literal[RUNTIMES]

# QuantizationConfig fields added after cache keys existed, with their defaults (see stage_settings)
_LATER_SETTINGS = {"activations": "static", "blockwise": []}


class QuantizationConfig(Strict):
    per_channel: bool = Field(True, description="per-output-channel weight scales (per-tensor breaks EfficientNet)")
    symmetric_weights: bool = Field(True, description="symmetric int8 weights (zero-point 0)")
    symmetric_activations: bool = Field(False, description="symmetric int8 activations")
    activation_type: Literal["uint8", "int8"] = Field("uint8", description="activation integer type")
    weight_type: Literal["int8", "uint8"] = Field("int8", description="weight integer type")
    op_types: list[Entry] | None = Field(None, description="ONNX op types to quantize; null = the toolchain's set")
    keep_float: list[Entry] = Field(
        default_factory=list, description="node-name prefixes (or ONNX op types) that stay in float; recorded in the manifest"
    )
    preset: Literal["performance", "mixed"] = Field(
        "mixed", description="OpenVINO/NNCF preset: symmetric (performance) or asymmetric activations (mixed)")
    model_type: Literal["transformer"] | None = Field(
        None, description="NNCF model_type; 'transformer' keeps attention-sensitive ops out of int8")
    bias_correction: Literal["fast", "full", "none"] = Field(
        "fast", description="NNCF bias correction after quantization")
    overflow_fix: Literal["auto", "first_layer", "enable", "disable"] = Field(
        "auto", description="NNCF overflow fix: 7-bit weights (first layer / every layer) so that CPUs without VNNI "
                            "cannot saturate u8*s8 sums; 'disable' = full 8-bit weights, for devices with VNNI/AMX "
                            "or ARM only; 'auto' = 'enable' or 'disable' from the device's int8 arithmetic")
    activations: Literal["static", "dynamic"] = Field(
        "static", description="static = activation ranges calibrated ahead of time (every format); dynamic = weights "
                              "int8 ahead of time, activations quantized per input at run time (ONNX Runtime "
                              "MatMulInteger, LiteRT dynamic-range kernels), no calibration: for transformers whose "
                              "activation ranges vary from input to input. OpenVINO: static only")
    blockwise: list[Entry] = Field(
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


class CalibrationConfig(Strict):
    method: Literal["minmax", "entropy", "percentile", "toolchain_default"] = Field(
        "minmax", description="range estimation method; toolchain_default = the quantizer's own default "
                              "(used for baselines: NNCF averages per-sample ranges, ORT uses MinMax)")
    samples: int = Field(256, ge=1, description="calibration samples drawn from the calibration split")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the calibration subset draw (0 .. 2^32-1)")
    percentile: float = Field(99.999, gt=90, le=100, description="percentile for method=percentile")
    min_samples: int = Field(
        32, ge=8, description="refuse calibration sets smaller than this; at least 8, because ranges fitted to one "
                              "or a few samples describe those samples, not the inputs the target will see")


class BenchmarkConfig(Strict):
    threads: int = Field(1, ge=1, le=256, description="runtime threads (set explicitly in every runtime)")
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    iterations: int = Field(100, ge=1, description="timed runs")
    op_profile_runs: int = Field(10, ge=0, le=100000, description="runs with the runtime's per-op profiler on, after "
                                 "timing (onnxruntime profiler, OpenVINO performance counters); 0: no per-op table")
    timeout_s: float = Field(300.0, gt=0, le=86400, description="wall-clock limit for one agent run (seconds, "
                                                                "finite, at most 86400 = one day)")


class GatesConfig(Strict):
    max_accuracy_drop_pt: float = Field(1.0, ge=0, description="fail if eval accuracy drops more than this (points)")
    min_agreement: float | None = Field(None, ge=0, le=1, description="fail if top-1 agreement with fp32 is below")
    min_cosine: float | None = Field(None, ge=-1, le=1, description="fail if mean output cosine with fp32 is below")
    golden_atol: float = Field(1e-4, ge=0, description="abs tolerance of the on-device golden-vector self-test")
    golden_rtol: float = Field(1e-3, ge=0, description="rel tolerance of the on-device golden-vector self-test")


class OpsConfig(Strict):
    allowed: list[Entry] | None = Field(
        None, description="op types (fnmatch patterns) the target runs; any other op fails the target")
    denied: list[Entry] = Field(
        default_factory=list, description="op types (fnmatch patterns, e.g. 'Flex*') that fail the target")


class _Retries(Strict):
    retries: int = Field(0, ge=0, le=10, description="times a failed connection, push or agent run is tried again "
                                                    "(a timeout or a failing golden check is never retried)")
    retry_backoff_s: float = Field(2.0, ge=0, le=600, description="seconds before the first retry; doubled each time")


class LocalTransportConfig(_Retries):
    kind: Literal["local"] = Field("local", description="the build host itself is the device")


class SshTransportConfig(_Retries):
    kind: Literal["ssh"] = Field(description="a board reached over OpenSSH (key-based, host key checked strictly)")
    setup: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$",
                              description="name of a device made on this machine by `edgepipe device setup` (e.g. "
                                          "ssh-loopback): host, port, user, identity_file, known_hosts and python "
                                          "come from its record unless given here")
    host: str | None = Field(None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_\[\]][A-Za-z0-9.:_\[\]-]*$",
                             description="host name or address of the board (required unless `setup` names a device)")
    port: int | None = Field(None, ge=1, le=65535, description="sshd port; null: 22 (or the set-up device's port)")
    user: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[a-z_][a-z0-9_.-]*$",
                             description="login name on the board; null: root (or the set-up device's user)")
    identity_file: str | None = Field(None, min_length=1, description="private key file (path; ~ and $VARS are "
                                      "expanded; relative paths are relative to the release config's folder); "
                                      "required unless `setup` names a device")
    known_hosts: str | None = Field(None, min_length=1, description="known_hosts file that must already hold the "
                                    "board's host key (path, expanded like identity_file); an unknown or changed "
                                    "key is refused, never accepted; required unless `setup` names a device")
    workdir: str = Field("/tmp/edgepipe", pattern=r"^/[A-Za-z0-9._/-]*$",
                         description="absolute directory on the board under which each run gets its own folder")
    python: str | None = Field(None, pattern=r"^[A-Za-z0-9._/-]+$",
                               description="Python on the board (with numpy and the runtime); null: python3 (or the "
                                           "interpreter recorded by `edgepipe device setup`)")
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="seconds to establish the connection")

    @model_validator(mode="after")
    def _reachable(self):
        if self.setup is None and not (self.host and self.identity_file and self.known_hosts):
            raise ValueError("an ssh transport needs host, identity_file and known_hosts (or `setup: NAME` for a "
                             "device made by `edgepipe device setup`)")
        return self


class AdbTransportConfig(_Retries):
    kind: Literal["adb"] = Field(description="an Android device reached over adb")
    serial: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$",
                        description="device serial as `adb devices` lists it (or host:port for adb over TCP)")
    adb: str = Field("adb", min_length=1, description="adb executable (name on PATH or path)")
    workdir: str = Field("/data/local/tmp/edgepipe", pattern=r"^/[A-Za-z0-9._/-]*$",
                         description="absolute directory on the device under which each run gets its own folder")
    python: str | None = Field(None, pattern=r"^[A-Za-z0-9._/-]+$",
                               description="Python on the device (e.g. Termux); null: the device has none and "
                                           "`benchmark_binary` runs instead")
    benchmark_binary: str | None = Field(
        None, pattern=r"^/[A-Za-z0-9._/-]+$",
        description="on-device path of the runtime's own benchmark tool (LiteRT benchmark_model, "
                    "onnxruntime_perf_test), used when the device has no Python")


class QemuTransportConfig(_Retries):
    kind: Literal["qemu"] = Field(description="an emulated Linux device on the build host (qemu user mode): aarch64 "
                                              "over an arm64 sysroot made by `edgepipe device setup qemu-arm64`, or "
                                              "x86_64 as another CPU model (this machine's own Python)")
    arch: Literal["aarch64", "x86_64"] = Field("aarch64", description="emulated ISA: aarch64 (qemu-aarch64) or x86_64 "
                                               "(qemu-x86_64, e.g. an AVX2 CPU without VNNI)")
    cpu: str = Field("cortex-a53", pattern=r"^[A-Za-z0-9][A-Za-z0-9,=_.-]*$",
                     description="emulated CPU model (qemu -cpu): cortex-a53 for a camera SoC, cortex-a72 for a board, "
                                 "cortex-a76 for a dot-product core; Haswell-noTSX for x86_64 with AVX2 and no VNNI")
    sysroot: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$",
                                description="name of the emulated device image (`edgepipe device setup <name>`); "
                                            "null: qemu-arm64 for aarch64, none for x86_64 (runs the host's Python)")
    count_instructions: bool = Field(True, description="also count instructions retired per inference (a cost "
                                                       "figure that repeats exactly; emulated wall time does not)")

    @model_validator(mode="after")
    def _sysroot_fits(self):
        if self.arch == "x86_64" and self.sysroot is not None:
            raise ValueError("transport.sysroot applies to arch aarch64; x86_64 runs this machine's own Python")
        return self


TransportConfig = Annotated[
    LocalTransportConfig | SshTransportConfig | AdbTransportConfig | QemuTransportConfig,
    Field(discriminator="kind")]


class DeviceConfig(Strict):
    probe: bool = Field(True, description="read the device's facts (ISA, int8 CPU features, cores, OS, runtimes) "
                                          "through its transport before any stage runs; false: use the declared "
                                          "ones below (a device not reachable from the build)")
    arch: Literal["x86_64", "aarch64"] | None = Field(None, description="declared ISA (needed when probe is false; "
                                                                        "checked against the probe otherwise)")
    features: list[Entry] = Field(default_factory=list, description="declared CPU features (/proc/cpuinfo names, "
                                  "e.g. avx2, avx512_vnni, asimddp, i8mm)")
    cpu_model: str = Field("", max_length=200, description="declared CPU model, for records")
    cores: int = Field(0, ge=0, le=4096, description="declared core count, for records")
    runtimes: dict[str, str] = Field(default_factory=dict, description="declared runtime versions on the device")

    @model_validator(mode="after")
    def _declared_when_not_probed(self):
        if not self.probe and self.arch is None:
            raise ValueError("device.probe is false: declare device.arch (and its features)")
        return self


class TargetProfile(Strict):
    name: str = Field(description="profile name; the file is targets/profiles/<name>.yaml")
    description: str = Field("", description="one line for humans")
    format: FormatName = Field(description="artifact format")
    precision: Literal["fp32", "fp16", "int8"] = Field(description="weights/activations precision")
    runtime: RuntimeName = Field(
        "onnxruntime", description="runtime that loads the artifact (must fit the format)")
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig, description="int8 settings")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig, description="int8 calibration")
    transport: TransportConfig = Field(default_factory=LocalTransportConfig, description="how to reach the device")
    device: DeviceConfig = Field(default_factory=DeviceConfig, description="what the device is: probed through the "
                                 "transport, or declared")
    required: bool = Field(False, description="a failure of this target fails the whole release (exit 1 and no "
                                              "index switch); otherwise only the target fails")
    verify_on_device: int = Field(0, ge=0, le=100000, description="eval samples also run on the device and compared "
                                  "with the fp32 reference there (agreement, cosine), besides the golden vectors")
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig, description="latency measurement")
    runtime_options: dict[str, str] = Field(
        default_factory=dict, description="options the runtime opens the model with wherever it runs (onnxruntime "
        "session config entries such as session.x64quantprecision, OpenVINO compile properties); settings that "
        "depend on the device are added to these when the device is known, and all go into the manifest")
    gates: GatesConfig = Field(default_factory=GatesConfig, description="verification gates")
    ops: OpsConfig = Field(default_factory=OpsConfig, description="op allow/deny lists checked on the artifact")

    @model_validator(mode="after")
    def _runtime_fits(self):
        fits = FORMATS[self.format].runtime
        if fits != self.runtime:
            raise ValueError(f"runtime '{self.runtime}' cannot load format '{self.format}'; use '{fits}'")
        return self

    @model_validator(mode="after")
    def _dynamic_fits(self):
        q, fmt = self.quantization, FORMATS[self.format]
        if q.activations == "dynamic" and fmt.no_dynamic_activations:
            raise ValueError(f"quantization.activations 'dynamic' is not available for {self.format} "
                             f"({fmt.no_dynamic_activations}); use 'static'")
        if q.blockwise and not fmt.blockwise:
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

    @model_validator(mode="after")
    def _runtime_options_fit(self):
        for key in self.runtime_options:
            if not _OPTION_KEY.fullmatch(key):
                raise ValueError(f"runtime_options key {key!r} must match {_OPTION_KEY.pattern}")
        if self.runtime_options and self.runtime not in ("onnxruntime", "openvino"):
            raise ValueError(f"runtime_options apply to onnxruntime and openvino; runtime '{self.runtime}' takes none")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)
