"""SSH transport: a board reached with the system OpenSSH client -> push (scp in SFTP mode) / run (argv, shell-quoted
for the board's shell, in a process group killed on timeout) / pull / probe, over one ControlMaster connection.

Why the OpenSSH client and not a Python library: it is what users already trust and configure for their boards, it
brings ControlMaster multiplexing (one handshake for a whole target, so 200 timed runs do not pay one each), strict
known_hosts checking and key handling for free, and it adds no dependency to edgepipe. Only argv lists are run
locally; the one string the board's shell sees is built with shlex quoting (targets/transports/posix.py).

Security defaults, none of them configurable away: key-only auth (`BatchMode`, `IdentitiesOnly`, no agent, no
password prompt), host keys checked against the profile's known_hosts only (`StrictHostKeyChecking=yes`: an
unknown or changed key is a one-line TransportError, never accepted), `-F none` so no ~/.ssh/config changes what
a profile says. Each transport gets `<workdir>/run-<random>` on the board, removed on close.
"""
from __future__ import annotations

import math
import os
import secrets
import select
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import weakref
from pathlib import Path

from pipeline.errors import TransportError

from ..ssh_loopback import find_program, load_record, setup_loopback  # noqa: F401  (SETUPS names it here)
from ..transport import RunResult, Transport, check_argv, check_remote_name, run_local
from .posix import (PULL_CHECK, control_dir, inside, kill_command, pull_check_error, pulled_into, with_retries,
                    wrapped_command)

# ssh's own complaints (exit 255) that mean "could not reach the board": worth a retry with back-off.
_CONNECTION_ERRORS = ("connection refused", "connection timed out", "operation timed out", "no route to host",
                      "network is unreachable", "connection reset", "connection closed", "kex_exchange_identification",
                      "could not resolve hostname", "broken pipe", "connection lost", "timeout, server")



def _sleep(seconds: float) -> None:  # the back-off wait (a seam for tests that count the waits)
    time.sleep(seconds)


def _plain_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # the board gets plain files owned by whoever unpacks them: no owner names, no set-id bits
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o755
    return info


def _end_master(master: subprocess.Popen, private_dir: str | None, grace_s: float = 2.0) -> None:
    """End the master: EOF on its session's stdin lets the board remove the run dir and the session (and with it
    the connection) end; a master that does not end in `grace_s` is terminated."""
    for stream in (master.stdin, master.stdout):
        if stream is not None:
            stream.close()
    try:
        master.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        master.terminate()
        try:
            master.wait(timeout=5)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
    if private_dir is not None:
        shutil.rmtree(private_dir, ignore_errors=True)


def _ssh_option_path(path: str) -> str:
    # -o values are split on whitespace and expand %-tokens: quote and escape so any path stays one path.
    if '"' in path:
        raise TransportError(f"path {path!r} contains a double quote, which ssh options cannot carry")
    path = path.replace("%", "%%")
    return f'"{path}"' if any(c.isspace() for c in path) else path


def expand_path(value: str, base_dir: str | None, what: str) -> str:
    """What it does: a profile path (~ and $VARS expanded; relative paths are relative to base_dir, the release
    config's folder) -> an absolute path; an unset variable is a TransportError naming it."""
    expanded = os.path.expandvars(os.path.expanduser(value))
    if "$" in expanded:
        raise TransportError(f"{what} {value!r}: an environment variable in it is not set")
    path = Path(expanded)
    if not path.is_absolute():
        path = Path(base_dir or os.getcwd()) / path
    return str(path.resolve())


class SshTransport(Transport):
    """A board over OpenSSH: one ControlMaster connection, a private run dir, argv-only commands."""

    kind = "ssh"

    def __init__(self, host: str | None = None, port: int | None = None, user: str | None = None,
                 identity_file: str | None = None, known_hosts: str | None = None, workdir: str = "/tmp/edgepipe",
                 python: str | None = None, connect_timeout_s: float = 10.0, setup: str | None = None,
                 base_dir: str | None = None, retries: int = 0, retry_backoff_s: float = 2.0) -> None:
        self.agent_remote = None
        self.attempts = 0  # connection attempts made (retries included)
        self._pending, self._spool, self._tar, self._sent = [], None, None, []
        self._closed = False
        self._master = None
        self.run_dir = None
        if setup is not None:  # a device `edgepipe device setup` made here: its record fills what is not given
            record = load_record(setup)
            host, port, user = host or record["host"], port or record["port"], user or record["user"]
            identity_file = identity_file or record["identity_file"]
            known_hosts = known_hosts or record["known_hosts"]
            python = python or record.get("python")
        if not host or not identity_file or not known_hosts:
            raise TransportError("ssh transport needs host, identity_file and known_hosts (or `setup: NAME`)")
        if host.startswith("-"):
            raise TransportError(f"ssh host {host!r} must not start with '-'")
        self.host, self.port, self.user = host, int(port or 22), user or "root"
        self.dest = f"{self.user}@{host}:{self.port}"
        self.identity_file = expand_path(identity_file, base_dir, "identity_file")
        self.known_hosts = expand_path(known_hosts, base_dir, "known_hosts")
        for path, what in ((self.identity_file, "identity_file"), (self.known_hosts, "known_hosts")):
            if not Path(path).is_file():
                raise TransportError(f"ssh {self.dest}: {what} {path} does not exist"
                                     + (" (it must already hold the board's host key)" if what == "known_hosts" else ""))
        self.workdir = workdir.rstrip("/") or "/"
        self.python = python or "python3"
        self.connect_timeout_s = connect_timeout_s
        self.retries, self.retry_backoff_s = retries, retry_backoff_s
        missing = [p for p in ("ssh", "scp") if find_program(p) is None]
        if missing:
            raise TransportError(f"ssh transport needs the OpenSSH client ({', '.join(missing)} not found); "
                                 "install the Debian package openssh-client")
        self._ssh_bin, self._scp_bin = find_program("ssh"), find_program("scp")
        # The control socket's folder is private to us (0700); a unix socket path must stay under ~100 bytes.
        self._private = tempfile.mkdtemp(prefix="edgepipe-ssh-", dir="/tmp" if len(tempfile.gettempdir()) > 60 else None)
        self._control = os.path.join(self._private, "cm")
        try:
            self._with_retries(self._start_master, "connect")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ connection

    def _options(self) -> list[str]:
        timeout = max(1, math.ceil(self.connect_timeout_s))
        return ["-F", "none", "-i", self.identity_file, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", "PasswordAuthentication=no", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={_ssh_option_path(self.known_hosts)}", "-o", "GlobalKnownHostsFile=none",
                "-o", "CheckHostIP=no", "-o", "UpdateHostKeys=no", "-o", f"ConnectTimeout={timeout}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR",
                "-o", f"ControlPath={_ssh_option_path(self._control)}"]

    def _ssh_argv(self, remote_command: str, master: bool = False) -> list[str]:
        mode = ["-o", "ControlMaster=yes", "-o", "ControlPersist=no"] if master else ["-o", "ControlMaster=no"]
        return [self._ssh_bin, *self._options(), *mode, "-p", str(self.port), "-l", self.user, "--", self.host,
                remote_command]

    def _failure(self, stderr: str, action: str) -> TransportError | None:
        """ssh's own error text -> a one-line TransportError (`retryable` set for connection failures), or None
        when the text is not ssh's (the remote command's own output)."""
        text = stderr.lower()
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("@")]
        last = lines[-1] if lines else "no output"
        if "host identification has changed" in text or "has changed and you have requested strict" in text:
            err = TransportError(f"ssh {self.dest}: host key CHANGED from the one in {self.known_hosts}; refused "
                                 "(if the board was reinstalled, check its new key's fingerprint and replace its line)")
        elif "host key verification failed" in text or "host key is known for" in text:
            err = TransportError(f"ssh {self.dest}: host key unknown, not in {self.known_hosts}; refused (add the "
                                 "board's key there after checking its fingerprint, e.g. from ssh-keyscan)")
        elif "unprotected private key file" in text:
            err = TransportError(f"ssh {self.dest}: identity_file {self.identity_file} is readable by others; "
                                 "ssh refuses it (chmod 600)")
        elif "permission denied" in text and ("publickey" in text or "password" in text):
            err = TransportError(f"ssh {self.dest}: the key {self.identity_file} was refused (Permission denied); "
                                 f"put its .pub into {self.user}'s authorized_keys on the board")
        elif any(marker in text for marker in _CONNECTION_ERRORS):
            err = TransportError(f"ssh {self.dest}: {action} failed: {last}")
            err.retryable = True
            return err
        else:
            return None
        err.retryable = False
        return err

    def _with_retries(self, step, action: str):
        return with_retries(step, self.retries, self.retry_backoff_s, _sleep)

    # The master connection's own session: make the run dir (and the control dir beside it), say where it really
    # is, then hold until our end of its stdin closes (close(), or this process dying) and remove both. So the board
    # is cleaned up even when the host goes away, and opening/closing cost no extra round trip.
    _SESSION = ('mkdir -p -- "$1" && mkdir -m 700 -- "$2" "$3" && cd -- "$2" && pwd -P || exit 1\n'
                'cat >/dev/null\ncd / && rm -rf -- "$2" "$3"\n')

    def _start_master(self) -> None:
        """Start the ControlMaster (our own child process, ended on close) with its run-dir session; return once
        the board answered with the run dir and the control socket listens."""
        self.attempts += 1
        self._stop_master()
        run_dir = f"{self.workdir}/run-{secrets.token_hex(8)}"
        session = shlex.join(["sh", "-c", self._SESSION, "edgepipe-session", self.workdir, run_dir,
                              control_dir(run_dir)])
        log_path = os.path.join(self._private, "master.log")
        with open(log_path, "wb") as log:
            self._master = subprocess.Popen(self._ssh_argv(session, master=True), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log)
        # A transport dropped without close (or a process exiting) must not leave the master connection behind.
        self._finalizer = weakref.finalize(self, _end_master, self._master, self._private)
        deadline = time.monotonic() + self.connect_timeout_s + 15  # the handshake itself, after the TCP connect
        answer = b""
        while not (answer.endswith(b"\n") and os.path.exists(self._control)):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not answer.endswith(b"\n") and self._master.poll() is not None):
                code = self._master.poll()
                self._stop_master()
                stderr = Path(log_path).read_text(errors="replace")
                if code not in (None, 255):  # connected, but the session could not make the run dir
                    raise TransportError(f"ssh {self.dest}: cannot create a run dir under {self.workdir}: "
                                         f"{' '.join(stderr.split())[-300:] or f'exit {code}'}")
                err = self._failure(stderr, "connect") or TransportError(
                    f"ssh {self.dest}: connect failed: {' '.join(stderr.split())[-300:] or 'no answer'}")
                err.retryable = getattr(err, "retryable", False) or not stderr.strip()
                raise err
            if not answer.endswith(b"\n"):
                ready, _, _ = select.select([self._master.stdout], [], [], min(remaining, 0.05))
                if ready:
                    answer += os.read(self._master.stdout.fileno(), 4096)
            else:
                time.sleep(0.005)
        self.run_dir = run_dir
        self._real_run_dir = answer.decode("utf-8", "replace").strip() or run_dir

    def _stop_master(self, grace_s: float = 2.0) -> None:
        if self._master is not None:
            self._finalizer.detach()
            _end_master(self._master, None, grace_s)
            self._master = None
        if os.path.exists(self._control):
            os.unlink(self._control)

    def _remote(self, script: str, *args: str, timeout_s: float = 60.0, action: str = "command") -> RunResult:
        """Run a small fixed sh script with quoted arguments on the board; ssh failures raise TransportError."""
        result = self._exec(shlex.join(["sh", "-c", script, "edgepipe", *args]), timeout_s, f"{action} on ssh")
        err = self._failure(result.stderr, action) if result.returncode == 255 else None
        if err is not None:
            raise err
        return result

    def _exec(self, remote_command: str, timeout_s: float, what: str) -> RunResult:
        return run_local(self._ssh_argv(remote_command), None, None, timeout_s, what)

    # ------------------------------------------------------------------ Transport

    def _check_open(self) -> None:
        if self._closed or self.run_dir is None:
            raise TransportError(f"ssh transport to {self.dest} is closed")

    def _scp(self, source: str, target: str, action: str) -> None:
        argv = [self._scp_bin, "-s", "-q", "-r", *self._options(), "-o", "ControlMaster=no", "-P", str(self.port),
                "--", source, target]
        try:
            result = run_local(argv, None, None, 600.0, f"scp ({action}) on ssh")
        except TransportError as exc:
            raise TransportError(f"ssh {self.dest}: {exc}") from exc
        if result.returncode != 0:
            err = self._failure(result.stderr, action)
            if err is None:
                err = TransportError(f"ssh {self.dest}: {action} failed: {' '.join(result.stderr.split())[-300:]}")
                err.retryable = False
            raise err

    def _scp_remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{self.user}@{host}:{path}"


    # Pushes are queued in one tar stream (a snapshot taken at push time) and unpacked on the board at the start of
    # the next command's own session, so a profile (model, golden vectors, agent, run) costs one round trip, not
    # four. The board side: unpack into a staging folder, then each member in push order to its target, whose
    # parent must resolve inside the run dir (a symlink made there by a command cannot redirect a push).
    _UNPACK = ('real=$1; stage=$2; shift 2; rm -rf "$stage"; mkdir "$stage" && tar -xf - -C "$stage" || '
               '{ echo "edgepipe-push-failed: cannot unpack on the board" >&2; exit 90; }\n'
               'i=0\nfor t in "$@"; do\n'
               '  p=${t%/*}; r=$(mkdir -p "$p" && { realpath "$p" 2>/dev/null || readlink -f "$p"; }) || '
               '{ echo "edgepipe-push-failed: $i: cannot create $p" >&2; exit 91; }\n'
               '  case "$r" in "$real"|"$real"/*) ;; *) echo "edgepipe-push-failed: $i: resolves to $r" >&2; '
               'exit 91;; esac\n'
               '  rm -rf "$t" && mv "$stage/$i" "$t" || { echo "edgepipe-push-failed: $i: cannot write $t" >&2; '
               'exit 92; }\n'
               '  i=$((i+1))\ndone\nrmdir "$stage"\n')

    def push(self, local: Path, remote_name: str) -> str:
        """Queue `local` (copied now into the pending stream) for `remote_name`; it lands on the board before the
        next run or pull, whose failure then names this push."""
        self._check_open()
        target = f"{self.run_dir}/{check_remote_name(remote_name)}"
        local = Path(local)
        if not local.exists():
            raise TransportError(f"cannot push {local}: no such file or directory")
        if self._spool is None:
            self._spool = tempfile.NamedTemporaryFile(dir=self._private, suffix=".tar")
            self._tar = tarfile.open(fileobj=self._spool, mode="w", format=tarfile.GNU_FORMAT)
        try:
            self._tar.add(local, arcname=str(len(self._pending)), filter=_plain_member)
        except OSError as exc:
            raise TransportError(f"cannot push {local}: {exc}") from exc
        self._pending.append((target, remote_name, local.name))
        return target

    def _take_pending(self):
        """-> (spool file name, unpack command) for the queued pushes, or (None, None); the queue starts anew."""
        if not self._pending:
            return None, None
        self._tar.close()
        self._spool.flush()
        spool, pending = self._spool, self._pending
        self._spool, self._tar, self._pending = None, None, []
        self._sent.append(spool)  # kept (and its name valid) until close, for retries of the same step
        command = shlex.join(["sh", "-c", self._UNPACK, "edgepipe-push", self._real_run_dir,
                              f"{control_dir(self.run_dir)}/in", *(t for t, _, _ in pending)])
        return spool.name, (command, pending)

    def _push_failure(self, result: RunResult, pending) -> TransportError | None:
        for line in result.stderr.splitlines():
            if line.startswith("edgepipe-push-failed: "):
                why = line.split(": ", 1)[1]
                index, _, detail = why.partition(": ")
                if index.isdigit() and int(index) < len(pending):
                    _, name, local_name = pending[int(index)]
                    where = f"outside the run dir ({detail})" if detail.startswith("resolves to") else detail
                    return TransportError(f"cannot push {local_name} to {name!r} on ssh {self.dest}: {where}")
                return TransportError(f"push on ssh {self.dest} failed: {why}")
        return None

    def _flush(self) -> None:
        """Send the queued pushes in a session of their own (before a pull)."""
        spool, unpack = self._take_pending()
        if spool is None:
            return
        command, pending = unpack

        def step():
            result = run_local(self._ssh_argv(command), None, None, 600.0, "push on ssh", stdin_path=spool)
            err = self._failure(result.stderr, "push") if result.returncode == 255 else None
            if err is not None or result.returncode != 0:
                raise err or self._push_failure(result, pending) or TransportError(
                    f"push on ssh {self.dest} failed: {' '.join(result.stderr.split())[-300:]}")

        self._with_retries(step, "push")

    def run(self, argv: list, timeout_s: float, env: dict | None = None) -> RunResult:
        """Run argv in the run dir (queued pushes are unpacked first, in the same session; the timeout covers
        both)."""
        argv = check_argv(argv)
        self._check_open()
        pgid_file = f"{control_dir(self.run_dir)}/{secrets.token_hex(6)}"
        command = wrapped_command(self.run_dir, pgid_file, argv, env, timeout_s)
        spool, unpack = self._take_pending()
        if unpack is not None:
            command = f"{unpack[0]} && {command}"
        what = f"{Path(argv[0]).name} on ssh {self.host}"

        def kill_on_board():
            # the local ssh client's end is not enough: the command runs on the board until its group is killed
            try:
                self._exec(kill_command(pgid_file), 30.0, "kill on ssh")
            except TransportError:
                pass  # the board's watchdog kills it shortly after the timeout

        def step():
            result = run_local(self._ssh_argv(command), None, None, timeout_s, what, stdin_path=spool,
                               on_timeout=kill_on_board)
            err = self._failure(result.stderr, "run") if result.returncode == 255 else None
            if err is None and unpack is not None and result.returncode in (90, 91, 92):
                err = self._push_failure(result, unpack[1])
            if err is not None:
                raise err
            return result

        return self._with_retries(step, "run")

    def pull(self, remote_path: str, local: Path) -> None:
        self._check_open()
        self._flush()
        source = f"{self.run_dir}/{check_remote_name(inside(self.run_dir, remote_path))}"
        local = Path(local).resolve()

        def step():
            check = self._remote(PULL_CHECK, source, self._real_run_dir, action="pull")
            err = pull_check_error(check.returncode, check.stderr, remote_path, f"ssh {self.dest}")
            if err is not None:
                raise err
            with pulled_into(local, remote_path) as item:
                self._scp(self._scp_remote(source), str(item), "pull")

        self._with_retries(step, "pull")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_master(grace_s=60.0)  # the master's session removes the run dir, then the connection ends
        finally:
            for spool in [*self._sent, self._spool]:  # queued pushes never sent are dropped with the run dir
                if spool is not None:
                    spool.close()
            shutil.rmtree(self._private, ignore_errors=True)
