"""The device-side wrapper shared by the ssh and adb transports (targets/transports/posix.py), run by this
machine's own sh: its watchdog kills a command the host lost track of, env names are checked, argv stays literal."""
from __future__ import annotations

import subprocess

import pytest

from pipeline.errors import TransportError
from targets.transports import posix

from .boards import hang_argv, marker, wait_count


def test_watchdog_kills_the_group_when_the_host_is_gone(tmp_path, monkeypatch):
    # No host-side timeout here: only the watchdog on the "device" can end the hung command and its grandchild.
    monkeypatch.setattr(posix, "WATCHDOG_GRACE_S", 0)
    mark = marker()
    (tmp_path / "ctl").mkdir()
    command = posix.wrapped_command(str(tmp_path), str(tmp_path / "ctl" / "pg"), hang_argv(mark), None, 1)
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 137  # SIGKILLed by the watchdog
    assert wait_count(mark) == 0 and not list((tmp_path / "ctl").iterdir())


def test_env_words_and_literal_argv(tmp_path):
    (tmp_path / "ctl").mkdir()
    words = ["$(touch pwned)", "a'b", "x y", "-e", "ü"]
    command = posix.wrapped_command(str(tmp_path), str(tmp_path / "ctl" / "pg"), ["printf", "%s|", *words],
                                    {"EP_A": "1;$(touch pwned)"}, 30)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert out.stdout == "|".join(words) + "|" and not (tmp_path / "pwned").exists()
    with pytest.raises(TransportError, match="not a valid variable name"):
        posix.env_words({"A B": "x"})
    with pytest.raises(TransportError, match="outside the run dir"):
        posix.inside("/w/run-1", "/w/run-10/x")
    assert posix.inside("/w/run-1", "/w/run-1/x/y") == "x/y"
