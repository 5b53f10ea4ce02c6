"""Devices this machine can provide, set up on request (`edgepipe device setup NAME`): name -> a setup function
that builds or starts it idempotently and returns what it made (paths, versions) as a dict.

Setup steps may download (Debian packages, wheels): they run only when asked, never during a build.
"""
from __future__ import annotations

import importlib

from pipeline.errors import ConfigError

# name -> ("module:function", one line for `edgepipe device setup list`)
SETUPS: dict[str, tuple[str, str]] = {
    "qemu-arm64": ("targets.emulator:setup_qemu_arm64",
                   "emulated aarch64 Linux device: qemu user mode + an arm64 sysroot with the runtimes"),
    "qemu-x86_64": ("targets.emulator:setup_qemu_x86_64",
                    "emulated x86-64 CPU models (e.g. Haswell: AVX2, no VNNI) running this machine's Python; "
                    "builds the instruction-count plugin"),
    "ssh-loopback": ("targets.transports.ssh:setup_loopback",
                     "this machine's own sshd on 127.0.0.1 as an SSH board (throwaway keys, strict known_hosts)"),
}


def run_setup(name: str, force: bool = False) -> dict:
    """What it does: a setup name -> its function's report; an unknown name is a one-line ConfigError."""
    if name not in SETUPS:
        raise ConfigError(f"unknown device setup '{name}'; known: {', '.join(sorted(SETUPS))}")
    module, func = SETUPS[name][0].split(":")
    return getattr(importlib.import_module(module), func)(force=force)
