"""Logging: the `edgepipe` logger and the toolchains' own named loggers -> one rich console handler (stderr).

The CLI calls `configure(verbosity)` once (-q = -1, default 0, -v = 1). It attaches one handler to `edgepipe` and
to each toolchain logger in TOOLCHAIN_LOGGERS and sets their levels: toolchains at WARNING (ERROR with -q, DEBUG
with -v), edgepipe at INFO (WARNING with -q, DEBUG with -v). That is those libraries' documented interface; the
root logger, `logging.disable` and the libraries' functions are left alone.

Records cross process boundaries as plain dicts: a toolchain child (pipeline/export/child.py) and a stage worker
(pipeline/executor/local.py) install `ForwardHandler` with the level the parent asked for, and the parent hands
each dict to `reemit`, which logs it again through the logger of the same name here.

Light on purpose: rich is imported inside `configure` only.
"""
from __future__ import annotations

import logging

LOGGER = "edgepipe"
# The toolchains' own logger names (nncf, onnxruntime's quantizers, onnx2tf/tf_keras through tensorflow and absl).
TOOLCHAIN_LOGGERS = ("nncf", "onnxruntime", "onnx2tf", "tensorflow", "absl", "openvino")
_LEVELS = {-1: (logging.WARNING, logging.ERROR), 0: (logging.INFO, logging.WARNING),
           1: (logging.DEBUG, logging.DEBUG)}

log = logging.getLogger(LOGGER)


def configure(verbosity: int = 0, handler: logging.Handler | None = None) -> logging.Handler:
    """What it does: -1 (quiet) / 0 / 1 (verbose) -> the console handler on `edgepipe` and the toolchain loggers,
    their levels set; calling it again replaces the handler it attached before (returns the new one)."""
    own, tools = _LEVELS[max(-1, min(1, verbosity))]
    if handler is None:
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False,
                              rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # which tool said it
    handler._edgepipe = True
    for name in (LOGGER, *TOOLCHAIN_LOGGERS):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_edgepipe", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(own if name == LOGGER else tools)
        logger.propagate = False  # shown once, by our handler; the root logger stays the application's
    return handler


def toolchain_level() -> int:
    """What it does: -> the level toolchain records need to be shown here (what a child forwards at)."""
    return logging.getLogger(TOOLCHAIN_LOGGERS[0]).getEffectiveLevel()


def edgepipe_level() -> int:
    return log.getEffectiveLevel()


def as_dict(record: logging.LogRecord) -> dict:
    """What it does: a log record -> a plain dict (message formatted, traceback as text) that pickles anywhere."""
    message = record.getMessage()
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        message = f"{message}\n{record.exc_text}"
    return {"name": record.name, "levelno": record.levelno, "levelname": record.levelname, "msg": message,
            "created": record.created, "pathname": record.pathname, "lineno": record.lineno,
            "funcName": record.funcName, "process": record.process}


def reemit(data: dict, default_name: str = LOGGER) -> None:
    """What it does: a record dict from another process -> logged here through the logger of its name (a name
    outside edgepipe's and the toolchains' hierarchies goes under edgepipe.<name>; the root's under default_name)."""
    name = data.get("name") or "root"
    if name == "root":
        name = default_name
    if name.split(".")[0] not in (LOGGER, *TOOLCHAIN_LOGGERS):
        name = f"{LOGGER}.{name}"
    logger = logging.getLogger(name)
    if logger.isEnabledFor(data["levelno"]):
        logger.handle(logging.makeLogRecord(dict(data, name=name, args=None, exc_info=None)))


class ForwardHandler(logging.Handler):
    """Sends each record, as a dict, through `send` (a child's or worker's channel to its parent)."""

    _edgepipe = True

    def __init__(self, send, level: int):
        super().__init__(level)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(("log", as_dict(record)))
        except Exception:  # noqa: BLE001 - a closed channel must not break the tool that logs
            self.handleError(record)


def forward(send, level: int, edgepipe: int | None = None, catch_root: bool = False,
            local: logging.Handler | None = None) -> ForwardHandler:
    """What it does: in a child or worker process -> `edgepipe` and the toolchain loggers forward their records
    through `send` (toolchains at `level`, edgepipe at `edgepipe`, default the same); with `catch_root`, records
    that reach the root logger too (libraries that log through the module-level logging functions); `local`, a
    handler of this process (a child's log file), also gets every record at its own level."""
    handler = ForwardHandler(send, logging.NOTSET)
    wanted = {name: edgepipe if name == LOGGER and edgepipe is not None else level
              for name in (LOGGER, *TOOLCHAIN_LOGGERS)}
    if catch_root:
        wanted[""] = level
    handler.addFilter(_AtLeast(wanted))
    for name, at in wanted.items():
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        if local is not None:
            logger.addHandler(local)
            at = min(at, local.level or at)
        logger.setLevel(at)
        if name:
            logger.propagate = False
    return handler


class _AtLeast(logging.Filter):
    """Forwards a record only at the level the parent asked for its logger (the logger itself may be lower, for a
    local log file)."""

    def __init__(self, wanted: dict):
        super().__init__()
        self._wanted = wanted

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        return record.levelno >= self._wanted.get(top, self._wanted.get("", logging.WARNING))
