"""Real devices for transport tests: the loopback sshd (set up by targets.ssh_loopback into a private cache folder,
stopped at the end) and the fake adb (tests/fake_adb.py over a folder of this machine), plus process checks."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE_ADB = Path(__file__).with_name("fake_adb.py")


def require_openssh() -> None:
    from targets.ssh_loopback import missing_programs

    missing = missing_programs()
    if missing:  # CI installs openssh-server/-client (.ci/run); EDGEPIPE_REQUIRE_ALL turns this skip into a failure
        pytest.skip(f"OpenSSH is not installed here ({', '.join(missing)} missing): install openssh-server and "
                    "openssh-client to run the SSH transport tests")


def start_loopback(cache: Path) -> dict:
    """`setup_loopback` with $XDG_CACHE_HOME pointing at `cache` (restored afterwards) -> its record."""
    from targets.ssh_loopback import setup_loopback

    require_openssh()
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        return setup_loopback()
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


def stop_loopback_in(cache: Path) -> None:
    from targets.ssh_loopback import stop_loopback

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        stop_loopback()
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def loopback(tmp_path_factory):
    """The loopback sshd in a private $XDG_CACHE_HOME (stopped after the module) -> its record + "cache"."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    record = start_loopback(cache)
    yield {**record, "cache": cache}
    stop_loopback_in(cache)


def ssh_fields(record: dict, **overrides) -> dict:
    """A loopback record -> SshTransport keyword arguments (explicit fields, no `setup` lookup)."""
    fields = {k: record[k] for k in ("host", "port", "user", "identity_file", "known_hosts", "python")}
    return {**fields, **overrides}


def fake_adb_env(monkeypatch, tmp_path: Path, serial: str = "emulator-5554") -> Path:
    """Point the fake adb at a device `serial`; returns the log file of its argv lists."""
    log = tmp_path / "adb-calls.jsonl"
    monkeypatch.setenv("FAKE_ADB_SERIAL", serial)
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    return log


def adb_workdir(tmp_path: Path) -> str:
    """A device work dir for the fake adb: a folder of this machine (the fake device shares its file system)."""
    path = tmp_path / "device" / "data" / "local" / "tmp" / "edgepipe"
    path.mkdir(parents=True)
    return str(path)


def marker() -> str:
    """A sleep duration unique to one test, so pgrep -f finds exactly that test's processes."""
    return f"{600 + secrets.randbelow(300)}.{secrets.randbelow(10**6):06d}"


def count_processes(pattern: str) -> int:
    """Processes whose command line contains `pattern` (zombies excluded; pgrep itself never matches)."""
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    alive = 0
    for pid in out:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        alive += state not in ("Z", "X")
    return alive


def wait_count(pattern: str, patience_s: float = 15.0) -> int:
    """The number of matching processes once it reaches 0, or after `patience_s` (what is left)."""
    deadline = time.monotonic() + patience_s
    while True:
        n = count_processes(pattern)
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


# A command that starts a grandchild and then hangs: both carry the marker in their command lines.
def hang_argv(mark: str) -> list[str]:
    return ["sh", "-c", 'sleep "$1" & sleep "$1"; wait', "hang", mark]


PYTHON = sys.executable
