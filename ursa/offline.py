"""Defaults for machines without internet: telemetry that cannot reach home fails loudly."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GIT_PYTHON_REFRESH": "quiet",  # MLflow probes for git; a missing one is not an error
}


def set_offline_defaults(**extra: str) -> None:
    """Set each default (and ``extra``) unless the environment already chose a value.

    Call before importing Prefect or MLflow: both read these at import time.
    """
    for key, value in {**OFFLINE_DEFAULTS, **extra}.items():
        os.environ.setdefault(key, value)
