"""Transports, one module each: a target profile's `transport` section -> a Transport that reaches its device
(probe / push / run(argv, timeout) / pull / close). `make_transport` (targets/transport.py) is the single entry.

    local  the host itself                              targets/transports/local.py
    ssh    a board over OpenSSH, key-only, strict keys  targets/transports/ssh.py
    adb    an Android device over adb                   targets/transports/adb.py
    qemu   an emulated aarch64 Linux device (qemu-user) targets/transports/qemu.py
"""
from __future__ import annotations

import importlib

from pipeline.errors import TransportError

TRANSPORTS = {
    "local": "targets.transports.local:LocalTransport",
    "ssh": "targets.transports.ssh:SshTransport",
    "adb": "targets.transports.adb:AdbTransport",
    "qemu": "targets.transports.qemu:QemuTransport",
}


def transport_class(kind: str):
    """What it does: a transport kind -> its class (imported now)."""
    ref = TRANSPORTS.get(kind)
    if ref is None:
        raise TransportError(f"unknown transport kind {kind!r}; known kinds: {', '.join(sorted(TRANSPORTS))}")
    module, name = ref.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TransportError(f"transport {kind!r} is not available here: {exc}") from exc
