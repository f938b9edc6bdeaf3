"""The prediction log's format: what the server records about each answer, and where.

The server (``serving/predictionlog.py``) writes it; the ``monitor`` flow and the feedback
routes read it. This module needs neither Prefect nor training code.

``<data>/predictions/``
  ``log/predictions-<YYYYMMDD>T<HH>-<n>.jsonl``  one JSON object a line (``pandas.read_json(
  path, lines=True)``), a new file every hour or when one reaches the size limit;
  ``images/<sha256>.<ext>``  the uploaded bytes, only when image keeping is on
  (``URSA_LOG_IMAGES_MAX_BYTES`` > 0), with ``images/<sha256>.json``, the answer it got.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from ursa.layout import Layout

# The log's columns, in order (``top`` is a list of {label, probability}).
FIELDS = (
    "at",  # UTC time of the answer, ISO 8601
    "model",
    "version",
    "sha256",  # of the uploaded bytes
    "bytes",
    "width",
    "height",
    "aspect",  # width / height
    "brightness",  # mean grayscale level, 0..1
    "contrast",  # standard deviation of the grayscale levels, 0..1
    "label",  # the top class
    "confidence",  # its probability
    "top",
    "kept",  # whether the image itself was kept (then feedback about it is accepted)
)
STATS_SIDE = 64  # input statistics are measured on a thumbnail this size: cheap at any size


def predictions_dir(data_dir: Path) -> Path:
    return Layout(data_dir).predictions


def log_dir(data_dir: Path) -> Path:
    return predictions_dir(data_dir) / "log"


def images_dir(data_dir: Path) -> Path:
    return predictions_dir(data_dir) / "images"


def answer_path(data_dir: Path, sha256: str) -> Path:
    """The kept image's record (``sha256`` checked by the caller); its ``file`` names the image."""
    return images_dir(data_dir) / f"{sha256}.json"


def kept_answer(data_dir: Path, sha256: str) -> dict | None:
    """The record of a kept image, or None when the log did not keep it (or it expired)."""
    path = answer_path(data_dir, sha256)
    try:
        answer = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return answer if (path.parent / answer.get("file", "")).is_file() else None


def input_stats(image: Image.Image) -> dict[str, float]:
    """Brightness, contrast and aspect ratio of an RGB image: what the drift watch compares.

    Measured on a thumbnail, so a 40-megapixel upload costs about what a small one does;
    the ``monitor`` flow measures the validation images with this same function.
    """
    width, height = image.size
    small = image.copy()
    small.thumbnail((STATS_SIDE, STATS_SIDE), reducing_gap=2.0)
    gray = np.asarray(small.convert("L"), dtype=np.float32) / 255.0
    return {
        "width": width,
        "height": height,
        "aspect": round(width / height, 4) if height else 0.0,
        "brightness": round(float(gray.mean()), 4),
        "contrast": round(float(gray.std()), 4),
    }


def log_file_name(at: datetime, n: int) -> str:
    return f"predictions-{at.astimezone(UTC):%Y%m%dT%H}-{n}.jsonl"


def read_predictions(data_dir: Path, since: datetime | None = None):
    """The log as a pandas DataFrame (one row per answer, ``at`` as UTC timestamps), only
    the answers at or after ``since`` when given. Files are named by their hour, so only the
    files that can hold such answers are read."""
    import pandas as pd

    frames = []
    first_hour = f"{since.astimezone(UTC):%Y%m%dT%H}" if since else ""
    for path in sorted(log_dir(data_dir).glob("predictions-*.jsonl")):
        if path.name.split("-")[1] < first_hour:
            continue
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is not read
        if complete:
            types = {"sha256": str, "version": str, "model": str, "label": str}
            frames.append(pd.read_json(io.BytesIO(complete), lines=True, dtype=types))
    if not frames:
        return pd.DataFrame(columns=list(FIELDS))
    frame = pd.concat(frames, ignore_index=True)
    frame["at"] = pd.to_datetime(frame["at"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["at"] >= pd.Timestamp(since)]
    return frame.reset_index(drop=True)
