"""Settings that depend on the device a target runs on, resolved from its DeviceFacts (never from the machine that
happens to build), each with the reason it was chosen; recorded in the manifest and part of the stage cache keys
(they change the profile the stages see).

int8 arithmetic on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiplies u8 activations by s8 weights with
vpmaddubsw, which adds pairs of products into a *saturating* 16-bit sum; VNNI (vpdpbusd) and AMX sum into 32 bits,
and ARM's int8 kernels widen before they add. Measured on the default release's EfficientNet-Lite0 int8 bundles
(111 held-out photos, top-1 agreement with fp32), on this VNNI host and under `qemu-x86_64 -cpu Haswell` (AVX2):

    onnxruntime, default session        VNNI 96.4 %   Haswell 77.5 %  (logits cosine 0.997 / 0.919)
    onnxruntime, session.x64quantprecision=1           Haswell 96.4 %  (cosine 0.997: identical to VNNI)
    OpenVINO, overflow_fix disable      VNNI 95.5 %   Haswell 69.4 %
    OpenVINO, overflow_fix enable       VNNI 83.8 %   Haswell 83.8 %  (7-bit weights: no saturation, coarser)

so: onnxruntime on such a device gets its precise int8 mode (a session option the firmware must set too: it is in
the manifest's runtime_options), and OpenVINO's overflow fix resolves to 'enable' there and 'disable' elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# int8 classes (DeviceFacts.int8_class) whose u8*s8 dot products can saturate a 16-bit pair sum
SATURATING = ("avx2", "sse")
ORT_PRECISE = "session.x64quantprecision"


@dataclass(frozen=True)
class Resolved:
    """One resolved setting: where it goes (`quantization.<field>` or `runtime_options.<key>`), its value, why."""

    setting: str
    value: object
    reason: str
    chosen_by: str = "device"  # device | profile (the profile set it explicitly and it fits the device)

    def to_json(self) -> dict:
        return {"setting": self.setting, "value": self.value, "reason": self.reason, "chosen_by": self.chosen_by}


@dataclass
class DeviceSettings:
    profile: object  # the TargetProfile with every device-dependent setting resolved
    resolved: list[Resolved] = field(default_factory=list)

    def to_json(self) -> list[dict]:
        return [r.to_json() for r in self.resolved]


class DeviceMismatch(ValueError):
    """A profile setting the device cannot honour (one line: which setting, which device, what to use)."""


def _describe(facts) -> str:
    emu = ", emulated" if facts.emulated else ""
    return f"{facts.arch} {facts.cpu_model} (int8 {facts.int8_class}{emu})"


def _overflow_fix(profile, facts) -> Resolved | None:
    if profile.format != "openvino" or profile.precision != "int8":
        return None
    asked = profile.quantization.overflow_fix
    saturating = facts.arch == "x86_64" and facts.int8_class in SATURATING
    if asked == "auto":
        if saturating:
            return Resolved("quantization.overflow_fix", "enable",
                            f"{_describe(facts)} has no VNNI: its u8*s8 kernels add product pairs in saturating "
                            "16-bit sums, so every layer's weights stay in 7 bits")
        why = ("sums u8*s8 products in 32 bits (VNNI/AMX)" if facts.arch == "x86_64"
               else "widens int8 products before adding them")
        return Resolved("quantization.overflow_fix", "disable", f"{_describe(facts)} {why}: full 8-bit weights")
    if asked == "disable" and saturating:
        raise DeviceMismatch(
            f"quantization.overflow_fix 'disable' needs a device whose int8 sums cannot saturate (VNNI, AMX or "
            f"ARM); the device is {_describe(facts)}: use 'auto', 'enable' or 'first_layer'")
    return Resolved("quantization.overflow_fix", asked, "set in the profile", chosen_by="profile")


def _ort_precision(profile, facts) -> Resolved | None:
    if profile.runtime != "onnxruntime" or profile.precision != "int8":
        return None
    if ORT_PRECISE in profile.runtime_options:
        return Resolved(f"runtime_options.{ORT_PRECISE}", profile.runtime_options[ORT_PRECISE], "set in the profile",
                        chosen_by="profile")
    if facts.arch == "x86_64" and facts.int8_class in SATURATING:
        return Resolved(f"runtime_options.{ORT_PRECISE}", "1",
                        f"{_describe(facts)} has no VNNI: onnxruntime's u8s8 kernels would saturate 16-bit pair "
                        "sums; its precise int8 mode avoids that (set this session option where the model runs)")
    return None


RESOLVERS = (_overflow_fix, _ort_precision)


def resolve(profile, facts) -> DeviceSettings:
    """What it does: a TargetProfile + its device's DeviceFacts -> DeviceSettings (the profile with every
    device-dependent setting resolved, and why). Raises DeviceMismatch for a setting the device cannot honour."""
    resolved = [r for r in (fn(profile, facts) for fn in RESOLVERS) if r is not None]
    quant, options = {}, dict(profile.runtime_options)
    for r in resolved:
        group, _, name = r.setting.partition(".")
        if group == "quantization":
            quant[name] = r.value
        else:
            options[name] = str(r.value)
    update = {"runtime_options": options}
    if quant:
        update["quantization"] = profile.quantization.model_copy(update=quant)
    return DeviceSettings(profile=profile.model_copy(update=update), resolved=resolved)
