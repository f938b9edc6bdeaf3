"""Quiet by default: Prefect's and MLflow's INFO lines go to ``<data>/logs/ursa.log``; the
console keeps warnings and errors (everything with ``-v``), without tracebacks unless
``--debug``: the log file has them."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _NoTraceback(logging.Formatter):
    """Formats a record as ``inner`` does, leaving its traceback to the log file."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        bare = copy.copy(record)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def quiet_env(verbose: bool) -> None:
    """Settings read when Prefect and MLflow are imported: call before importing them."""
    if not verbose:
        # MLflow prints "View run ... at ..." on stdout for every run on a tracking server.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def route_logs(log_file: Path, verbose: bool, debug: bool) -> None:
    """Send Prefect's and MLflow's records to ``log_file``; keep the console for warnings.

    Call after importing the flow to run (Prefect and MLflow configure their loggers when
    imported); it may be called again and adds no second file handler.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = _file_handler(log_file)
    console_level = logging.INFO if verbose else logging.WARNING
    root, mlflow = logging.getLogger(), logging.getLogger("mlflow")
    # Prefect's loggers propagate to the root's console handler; MLflow's carry their own.
    consoles = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    consoles += [h for h in mlflow.handlers if h is not to_file]
    for handler in consoles:
        handler.setLevel(console_level)
        if not debug and not isinstance(handler.formatter, _NoTraceback):
            handler.setFormatter(_NoTraceback(handler.formatter))
    for logger in (root, mlflow):
        if to_file not in logger.handlers:
            logger.addHandler(to_file)
    # A dozen lines per trial about starting and stopping the system-metrics monitor: the
    # metrics stay, the chatter goes.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


_handlers: dict[Path, logging.Handler] = {}


def _file_handler(log_file: Path) -> logging.Handler:
    if log_file not in _handlers:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(FORMAT))
        _handlers[log_file] = handler
    return _handlers[log_file]
