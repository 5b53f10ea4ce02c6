"""Device facts per target: a profile's transport + device sections -> DeviceFacts, probed through the transport
before any stage of that target runs (or taken as declared), remembered per transport for the build.

What the facts decide (targets/device.py, pipeline/export/*): int8 settings that depend on the CPU, and the cache
keys of quantize, verify and profile, so a result made for one CPU is never published as another's.
"""
from __future__ import annotations

import json
import threading

from .errors import ConfigError, TransportError

_LOCK = threading.Lock()
_FACTS: dict[str, object] = {}


def open_transport(config, base_dir=None):
    """What it does: a profile's transport section -> an open Transport (targets/transports/)."""
    from targets.transport import make_transport

    fields = config.model_dump(exclude={"kind", "retries", "retry_backoff_s"})
    params = _init_params(config.kind)
    if base_dir is not None and "base_dir" in params:
        fields["base_dir"] = str(base_dir)
    if "retries" in params:  # transports that reach a device over a network retry its connection themselves
        fields.update(retries=config.retries, retry_backoff_s=config.retry_backoff_s)
    return make_transport(config.kind, **fields)


def _init_params(kind: str) -> set[str]:
    import inspect

    from targets.transports import transport_class

    return set(inspect.signature(transport_class(kind)).parameters)


def host_facts():
    """What it does: -> DeviceFacts of the machine running the build (where host-side verification runs)."""
    from .target_config import LocalTransportConfig, TargetProfile

    return device_facts(TargetProfile(name="build-host", format="onnx", precision="fp32",
                                      transport=LocalTransportConfig()))


def device_facts(profile, base_dir=None):
    """What it does: a target profile -> DeviceFacts of its device: probed through its transport (once per distinct
    transport in this process) unless device.probe is false; a declared arch that the probe contradicts is a
    ConfigError. A device that cannot be reached raises TransportError (that target fails, the others go on)."""
    from targets.device import declared_facts, facts_from_probe

    decl = profile.device
    kind = profile.transport.kind
    if not decl.probe:
        return declared_facts(decl.model_dump(), kind)
    key = json.dumps(profile.transport.model_dump(mode="json"), sort_keys=True)
    with _LOCK:
        facts = _FACTS.get(key)
    if facts is None:
        with open_transport(profile.transport, base_dir) as transport:
            probe = transport.probe()
            facts = facts_from_probe(probe, transport=kind, emulated=bool(getattr(transport, "emulated", False)),
                                     emulator=str(getattr(transport, "emulator", "")))
        with _LOCK:
            _FACTS[key] = facts
    if decl.arch is not None and decl.arch != facts.arch:
        raise ConfigError(f"target '{profile.name}': device.arch is {decl.arch} but the device reached through "
                          f"{kind} is {facts.arch}; fix the profile or the transport")
    from targets.device import INT8_FEATURES

    checkable = set(INT8_FEATURES.get(facts.arch, ()))  # only these are read from the device
    missing = [f for f in decl.features if f in checkable and not facts.has(f)]
    if missing:
        raise TransportError(f"target '{profile.name}': the device lacks declared CPU feature(s) "
                             f"{', '.join(missing)} (it has {', '.join(facts.features) or 'none of note'})")
    return facts
