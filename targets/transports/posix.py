"""Remote POSIX shell plumbing shared by the ssh and adb transports: a run dir + argv + env + time limit -> one
command string for the device's shell (every word quoted with shlex.quote) that runs the argv in a session of its
own, and the command that kills that session's process group when the host gives up on it.

Why a wrapper: ssh and adb hand the device one string that its shell parses, and killing the local ssh/adb client
leaves the remote command running. The wrapper starts the command under `setsid` (its process group id is written
to a file in the run dir), waits for it, kills whatever the command left in its group when it ends (as the local
transport does), and arms a watchdog on the device that kills the group a while after the host's own timeout, so a
lost connection cannot leave a process behind either.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

from pipeline.errors import TransportError

# Positional parameters: $1 run dir, $2 pgid file, $3 watchdog seconds, then the argv (env K=V ... first).
# `kill -9 -PGID` rather than `kill -KILL -- -PGID`: dash's and toybox's builtin kill take no `--`.
_WRAPPER = r"""cd "$1" || exit 125
pgfile=$2; limit=$3; shift 3
if command -v setsid >/dev/null 2>&1; then ss=setsid; else ss=; fi
$ss sh -c 'echo $$ > "$0"; exec "$@"' "$pgfile" "$@" </dev/null &
pid=$!
$ss sh -c 'sleep "$1"; kill -9 -"$2" 2>/dev/null || kill -9 "$2"' watchdog "$limit" "$pid" </dev/null >/dev/null 2>&1 &
dog=$!
echo "$dog" > "$pgfile.dog"
wait "$pid"; rc=$?
kill -9 -"$pid" 2>/dev/null
kill -9 -"$dog" 2>/dev/null || kill -9 "$dog" 2>/dev/null
rm -f "$pgfile" "$pgfile.dog"
exit "$rc"
"""
_KILL = r"""for f in "$1" "$1.dog"; do
  p=$(cat "$f" 2>/dev/null) && [ -n "$p" ] && { kill -9 -"$p" 2>/dev/null || kill -9 "$p" 2>/dev/null; }
done
rm -f "$1" "$1.dog"
exit 0
"""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The device's watchdog fires this long after the host's timeout: the host kills first, the watchdog only when the
# host could not (connection lost, host killed).
WATCHDOG_GRACE_S = 30


def env_words(env: dict | None) -> list[str]:
    """What it does: an env dict -> `env K=V ...` argv words (empty without env); a name that is no shell
    variable name is a TransportError (it would be parsed as the command)."""
    if not env:
        return []
    words = ["env"]
    for key, value in env.items():
        key, value = str(key), str(value)
        if not _ENV_NAME.fullmatch(key) or "\x00" in value:
            raise TransportError(f"environment name {key!r} is not a valid variable name (or its value has NUL)")
        words.append(f"{key}={value}")
    return words


def control_dir(run_dir: str) -> str:
    """What it does: a run dir -> the folder beside it that holds the process-group files of its commands (kept out
    of the run dir, which holds only what was pushed and what commands wrote)."""
    return run_dir + ".ctl"


def wrapped_command(run_dir: str, pgid_path: str, argv: list, env: dict | None, timeout_s: float) -> str:
    """What it does: a run dir, pgid file path, argv and env -> one shell command string (shlex-quoted words)."""
    limit = str(int(math.ceil(timeout_s)) + WATCHDOG_GRACE_S)
    return shlex.join(["sh", "-c", _WRAPPER, "edgepipe-run", run_dir, pgid_path, limit, *env_words(env), *argv])


def kill_command(pgid_path: str) -> str:
    """What it does: -> the shell command that SIGKILLs the process groups a wrapped command started."""
    return shlex.join(["sh", "-c", _KILL, "edgepipe-kill", pgid_path])


def inside(run_dir: str, remote_path: str) -> str:
    """What it does: an absolute path under run_dir or a relative name -> the relative name within run_dir
    (checked later with check_remote_name); a path elsewhere is a TransportError."""
    if not remote_path.startswith("/"):
        return remote_path
    prefix = run_dir.rstrip("/") + "/"
    if not remote_path.startswith(prefix):
        raise TransportError(f"cannot pull {remote_path!r}: outside the run dir {run_dir}")
    return remote_path[len(prefix):]


# "$1" must resolve inside the run dir "$2": a symlink made there by a command must not redirect a push or a pull.
CONTAINED = ('r=$(realpath "$1" 2>/dev/null || readlink -f "$1") || exit 3; '
             'case "$r" in "$2"|"$2"/*) ;; *) echo "resolves to $r" >&2; exit 3;; esac; ')
# Before a pull: "$1" exists (else exit 4) and resolves inside the run dir "$2" (else exit 3).
PULL_CHECK = '[ -e "$1" ] || exit 4; ' + CONTAINED


def pull_check_error(returncode: int, stderr: str, remote_path: str, device: str) -> TransportError | None:
    """What it does: the exit status of PULL_CHECK -> the TransportError that refuses the pull, or None."""
    if returncode == 4:
        return TransportError(f"cannot pull {remote_path}: no such file or directory on {device}")
    if returncode != 0:
        return TransportError(f"cannot pull {remote_path}: outside the run dir ({' '.join(stderr.split())[-200:]})")
    return None


@contextlib.contextmanager
def pulled_into(local: Path, remote_path: str):
    """What it does: yields a staging path beside `local` for a pull's download; then it becomes `local` (a folder
    merges into it, as the local transport's pull does). Nothing half-copied lands at `local` itself."""
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edgepipe-pull-", dir=local.parent))
    try:
        item = staging / "item"
        yield item
        if item.is_dir():
            shutil.copytree(item, local, dirs_exist_ok=True)
        else:
            os.replace(item, local)
    except OSError as exc:
        raise TransportError(f"cannot pull {remote_path} to {local}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def with_retries(step, retries: int, backoff_s: float, sleep):
    """What it does: runs `step` (which raises TransportError); an error marked `retryable` (the device could not be
    reached) is tried again up to `retries` times, after `sleep(backoff_s)`, then twice that, ... Anything else
    (a timeout, a host key, a refused key, a failing command) is raised at once."""
    attempt = 0
    while True:
        try:
            return step()
        except TransportError as err:
            if not getattr(err, "retryable", False) or attempt >= retries:
                if attempt:
                    raise TransportError(f"{err} (after {attempt + 1} attempts)") from err
                raise
            sleep(backoff_s * 2 ** attempt)
            attempt += 1
