"""Error hierarchy of edgepipe: every failure a user can cause maps to one of these, with a one-line message.

Raise them `from` the cause. Only the runner and the CLI catch them.
"""
from __future__ import annotations


class EdgepipeError(Exception):
    """Base class. `str(err)` is the one line shown to the user."""

    exit_code = 1


class ConfigError(EdgepipeError):
    """A release config or target profile is missing, malformed or inconsistent (exit code 2)."""

    exit_code = 2


class InputSpecError(EdgepipeError):
    """Data does not match the IOSpec: wrong name, shape, dtype (exit code 2)."""

    exit_code = 2


class CalibrationError(EdgepipeError):
    """A calibration set is unusable: too few samples, non-finite or constant values (exit code 2)."""

    exit_code = 2


class MissingDependencyError(EdgepipeError):
    """An import a stage needs is not installed; the message names the pip extra (exit code 2)."""

    exit_code = 2


class ModelFactoryError(EdgepipeError):
    """The model factory could not be imported or failed to build the model (exit code 2)."""

    exit_code = 2


class StageError(EdgepipeError):
    """A stage failed on valid input (a converter crash, an unsupported op); fails one target only."""


class GateError(EdgepipeError):
    """A verification gate failed for a target."""


class TransportError(EdgepipeError):
    """A transport could not reach, push to, run on or pull from a device."""


class BundleError(EdgepipeError):
    """A bundle is tampered, incomplete or fails its golden vectors."""


def exit_status(exitcode: int | None) -> str:
    """What it does: a process's exit code (negative: the signal that ended it) -> "SIGSEGV", "exit code 3"."""
    import signal

    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def portable(err: BaseException, where: str) -> BaseException:
    """What it does: an exception raised in another process -> one that survives pickling (same class when it can),
    carrying that process's traceback as a note ("<where> traceback: ...")."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    try:
        copy = pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - any exception type may fail to pickle; keep its line
        copy = StageError(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    copy.add_note(f"{where} traceback:\n{text}")
    return copy
