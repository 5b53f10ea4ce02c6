"""The loopback SSH board: this machine's own OpenSSH server on 127.0.0.1 -> a device record (host, port, user, keys,
known_hosts, python) that `transport: {kind: ssh, setup: ssh-loopback}` profiles connect with.

`edgepipe device setup ssh-loopback` makes, under `$XDG_CACHE_HOME/edgepipe/devices/ssh-loopback/` (default
`~/.cache`), a private sshd_config listening on a free high port of 127.0.0.1 only, an ed25519 host key, a
throwaway ed25519 client key (the only key the server accepts), a known_hosts holding the host key, and starts
`sshd` as a daemon. Running it again reuses the running server (idempotent); `force=True` makes new keys and a
new server. The "board's" Python is the interpreter that ran the setup (recorded as `python`), so the runtimes
installed beside edgepipe import on the board.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import TransportError

NAME = "ssh-loopback"
RECORD = "device.json"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")


def device_dir(name: str = NAME) -> Path:
    """What it does: a set-up device's name -> its folder under $XDG_CACHE_HOME/edgepipe/devices/ (default
    ~/.cache): outside the repo, shared by every checkout of this user."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "edgepipe" / "devices" / name


def find_program(name: str) -> str | None:
    """What it does: a program name -> its absolute path on PATH or in the sbin folders (sshd lives there and a
    non-root PATH often lacks them), or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which(name, path=path)
    return str(Path(found).resolve()) if found else None


def missing_programs() -> list[str]:
    """What it does: -> the OpenSSH programs the SSH transport and the loopback board need that are not installed
    here (empty when all are)."""
    return [p for p in ("ssh", "scp", "ssh-keygen", "sshd") if find_program(p) is None]


def load_record(name: str = NAME) -> dict:
    """What it does: a set-up device's name -> its record (host, port, user, identity_file, known_hosts, python);
    a device never set up here is a one-line TransportError saying how to set it up."""
    path = device_dir(name) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise TransportError(f"device '{name}' is not set up on this machine (no {path}); run "
                             f"`edgepipe device setup {name}`") from None
    except (OSError, ValueError) as exc:
        raise TransportError(f"device record {path} is unreadable ({exc}); run "
                             f"`edgepipe device setup {name} --force`") from exc
    if not isinstance(record, dict) or not {"host", "port", "user", "identity_file", "known_hosts"} <= set(record):
        raise TransportError(f"device record {path} lacks fields; run `edgepipe device setup {name} --force`")
    return record


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.settimeout(2.0)
            return s.recv(4).startswith(b"SSH-")  # an sshd greets first; something else on the port is not ours
    except OSError:
        return False


def _our_sshd(folder: Path) -> int | None:
    """The pid of the sshd started from this folder's config, if it still runs."""
    try:
        pid = int((folder / "sshd.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    # sshd rewrites its title ("sshd: /usr/sbin/sshd -f <config> [listener] ..."): the config path stays in it
    return pid if str(folder / "sshd_config").encode() in cmdline else None


def stop_loopback(name: str = NAME) -> bool:
    """What it does: stops the loopback sshd of this device folder (True when one was running)."""
    folder = device_dir(name)
    pid = _our_sshd(folder)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.02)
    return True


def _keygen(keygen: str, path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    proc = subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise TransportError(f"ssh-keygen failed for {path}: {' '.join(proc.stderr.split())}")


def _sshd_config(folder: Path, port: int, user: str) -> str:
    sftp = next((p for p in _SFTP_SERVERS if Path(p).is_file()), "internal-sftp")
    # StrictModes off: the folder may live under a world-writable /tmp (tests); it is ours and 0700 itself.
    # No PAM (needs root and a service file), no passwords, nothing but this one client key.
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}", f"PidFile {folder / 'sshd.pid'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", f"AllowUsers {user}", "X11Forwarding no", "AllowTcpForwarding no",
        "PermitTTY no", "PrintMotd no", "MaxSessions 64", "MaxStartups 64:30:128", "LogLevel ERROR",
        f"Subsystem sftp {sftp}", ""])


def setup_loopback(force: bool = False) -> dict:
    """What it does: -> the loopback board's record {host, port, user, identity_file, known_hosts, python, pid,
    folder}: keys, config and known_hosts made once, sshd started as a daemon on 127.0.0.1 (reused while it runs;
    `force` replaces everything). The record is also written to <folder>/device.json for the transport."""
    missing = missing_programs()
    if missing:
        raise TransportError(f"ssh-loopback needs OpenSSH ({', '.join(missing)} not found); install the Debian "
                             "packages openssh-server and openssh-client")
    folder = device_dir(NAME)
    if force:
        stop_loopback(NAME)
    elif (folder / RECORD).is_file():
        record = load_record(NAME)
        pid = _our_sshd(folder)
        if pid is not None and _listening(int(record["port"])):
            return {**record, "pid": pid, "folder": str(folder), "reused": True}
        stop_loopback(NAME)  # a stale daemon (wrong port answered) goes before a new one starts
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    user = getpass.getuser()
    keygen = find_program("ssh-keygen")
    _keygen(keygen, folder / "host_key", f"edgepipe-ssh-loopback-host@{socket.gethostname()}")
    _keygen(keygen, folder / "client_key", "edgepipe-ssh-loopback-client")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    if os.geteuid() == 0:  # root's sshd insists on its privilege-separation folder (Debian's init makes it)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    record = _start(folder, user)
    (folder / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return {**record, "pid": _our_sshd(folder), "folder": str(folder), "reused": False}


def _start(folder: Path, user: str) -> dict:
    sshd = find_program("sshd")
    host_pub = (folder / "host_key.pub").read_text().split()
    last_error = ""
    for _ in range(5):  # a free port can be taken between choosing and binding: choose again
        port = _free_port()
        (folder / "sshd_config").write_text(_sshd_config(folder, port, user))
        (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        log = folder / "sshd.log"
        log.unlink(missing_ok=True)
        # sshd must be started by its absolute path (it re-executes itself); it daemonizes once listening.
        proc = subprocess.run([sshd, "-f", str(folder / "sshd_config"), "-E", str(log)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + 10
        while proc.returncode == 0 and time.monotonic() < deadline and not _listening(port):
            time.sleep(0.05)
        if proc.returncode == 0 and _our_sshd(folder) is not None and _listening(port):
            return {"host": "127.0.0.1", "port": port, "user": user, "identity_file": str(folder / "client_key"),
                    "known_hosts": str(folder / "known_hosts"), "python": sys.executable}
        text = proc.stderr + (log.read_text(errors="replace") if log.is_file() else "")
        last_error = " ".join(text.split())[-300:] or f"exit {proc.returncode}"
        stop_loopback(NAME)
    raise TransportError(f"could not start the loopback sshd ({sshd}): {last_error}")
