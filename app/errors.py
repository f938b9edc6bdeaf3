"""What the ``ursa`` command says when it stops: one line a person can act on, or for a bug a
short line and the file that holds the full traceback."""

from __future__ import annotations

import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path


class UsageError(Exception):
    """Something the person at the keyboard can fix: what is wrong, and what to do about it."""

    def __init__(self, what: str, todo: str) -> None:
        super().__init__(f"{what.rstrip('.')}. {todo}")


# Errors the stages raise that a person fixes (a missing file, port, token or champion), by
# module and class: checked only when that module is loaded, so the CLI imports none of them.
USER_FIXABLE = (
    ("ursa.settings", "SettingsError"),
    ("app.stack", "PortBusy"),
    ("tasks.weights", "WeightsUnavailable"),
    ("tasks.data_checks", "DatasetUnusable"),
    ("tasks.urls", "SearchGaveUp"),
    ("tasks.image_search", "SearchError"),
    ("tasks.registry", "RollbackError"),
    ("tasks.deploy", "DeployError"),
)


def user_fixable(exc: BaseException) -> bool:
    if isinstance(exc, UsageError):
        return True
    for module, name in USER_FIXABLE:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return False


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, as ``ursa: error: <what>. <what to do>`` needs."""
    return " ".join(str(exc).split()) or type(exc).__name__


def write_traceback(exc: BaseException, logs_dir: Path) -> Path:
    """Write the full traceback into ``logs_dir``; returns the file."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"crash-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}.log"
    path.write_text("".join(traceback.format_exception(exc)))
    return path
