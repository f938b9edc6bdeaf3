"""The prediction log's writer: records every answer (or a sampled share) off the request path.

A request only offers its record to a bounded in-memory queue and never waits: when the
queue is full (a stuck or slow disk) the record is dropped and counted. One writer thread
drains the queue, appends JSON lines to the current file (a new one every hour or at the
size limit) and, when image keeping is on, stores each image once by content, within a byte
cap. A write that fails (disk full) drops its records, counts them and is logged; the
requests have long been answered. The format is :mod:`ursa.predictions`.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ursa.files import atomic_write_bytes
from ursa.images import sniff_extension
from ursa.predictions import answer_path, images_dir, log_dir, log_file_name

logger = logging.getLogger("ursa.serving.predictions")

BATCH = 256  # records written with one write() at most
# After a record arrives, the writer waits this long for others before it writes: one wake-up,
# open and write per gathering instead of per answer, each of which took the interpreter
# lock from the event loop (BENCHMARKS.md, serving throughput).
GATHER_S = 0.2
# Bytes of images waiting in the queue at most: the queue is bounded in records, and an
# image may be as large as the body limit.
MAX_PENDING_IMAGE_BYTES = 64 * 1024 * 1024
RETENTION_SWEEP_S = 3600.0
LOG_TOP_K = 5  # classes recorded per answer, whatever k the client asked for


@dataclass(frozen=True)
class LogOptions:
    sample: float = 1.0  # share of answers recorded
    queue_size: int = 10_000
    rotate_bytes: int = 64 * 1024 * 1024
    images_max_bytes: int = 0  # 0: images are not kept
    retention_days: float = 30.0  # kept images older than this are deleted


class PredictionLog:
    """Offer records with :meth:`offer` (never blocks, never raises); one thread writes them."""

    def __init__(
        self,
        data_dir: Path,
        options: LogOptions,
        count: Callable[[str, str, int], None] = lambda kind, outcome, n: None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.options = options
        self.count = count  # (records | images, outcome, how many) -> a metric
        self._queue: queue.Queue[tuple[dict, bytes | None] | None] = queue.Queue(options.queue_size)
        self._pending_image_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._file: Path | None = None
        self._hour = ""
        self._n = 0
        self._images_bytes = 0
        self._last_sweep = 0.0
        self._last_problem = 0.0

    def sampled(self) -> bool:
        """Whether to record the next answer (``sample`` of them, at random)."""
        sample = self.options.sample
        return sample >= 1.0 or (sample > 0.0 and random.random() < sample)

    @property
    def keeps_images(self) -> bool:
        return self.options.images_max_bytes > 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ursa-prediction-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout`` seconds), then end the writer."""
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass  # a stuck writer: it is a daemon thread and dies with the process
        self._thread.join(timeout)
        self._thread = None

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every record offered so far is written (or dropped); for tests and
        shutdown. True when the queue emptied within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def offer(self, record: dict, image: bytes | None = None) -> None:
        """Queue ``record`` (and the image's bytes, to keep) for writing; drop it when full."""
        if image is not None:
            with self._lock:
                if not self.keeps_images or (
                    self._pending_image_bytes + len(image) > MAX_PENDING_IMAGE_BYTES
                ):
                    image = None
                else:
                    self._pending_image_bytes += len(image)
        try:
            self._queue.put_nowait((record, image))
        except queue.Full:
            self._release(image)
            self.count("records", "dropped_queue_full", 1)

    def _release(self, image: bytes | None) -> None:
        if image is not None:
            with self._lock:
                self._pending_image_bytes -= len(image)

    # --- the writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        self._sweep_if_due()  # also measures what the kept images take
        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._sweep_if_due()
                continue
            if item is not None:
                time.sleep(GATHER_S)
            batch = [item]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is None for i in batch)
            records = [i for i in batch if i is not None]
            try:
                self._write(records)
            finally:
                for _ in batch:
                    self._queue.task_done()
            self._sweep_if_due()
            if stop:
                return

    def _write(self, items: list[tuple[dict, bytes | None]]) -> None:
        if not items:
            return
        lines = []
        for record, image in items:
            kept = False
            if image is not None:
                kept = self._keep(record, image)
                self._release(image)
            lines.append(json.dumps({**record, "kept": kept}, separators=(",", ":")) + "\n")
        try:
            self._append("".join(lines).encode())
        except OSError as exc:  # disk full, folder gone, permissions: drop, count, say so
            self.count("records", "dropped_write_error", len(items))
            self._problem(f"Prediction log: {len(items)} records dropped: {exc}")
            return
        self.count("records", "written", len(items))

    def _append(self, data: bytes) -> None:
        try:
            self._append_to(self._current_file(), data)
        except FileNotFoundError:  # the folder was removed under us (by hand, a cleanup)
            self._file = None
            self._append_to(self._current_file(), data)

    def _current_file(self) -> Path:
        """The file to append to: a new one every hour or once the current one is full."""
        now = datetime.now(UTC)
        hour = f"{now:%Y%m%dT%H}"
        if self._file is None or hour != self._hour or self._too_big(self._file):
            folder = log_dir(self.data_dir)
            folder.mkdir(parents=True, exist_ok=True)
            if hour != self._hour:
                self._hour, self._n = hour, len(list(folder.glob(f"predictions-{hour}-*.jsonl")))
            self._file = folder / log_file_name(now, self._n)
            self._n += 1
        return self._file

    @staticmethod
    def _append_to(path: Path, data: bytes) -> None:
        with open(path, "ab") as fh:
            fh.write(data)
            fh.flush()

    def _too_big(self, path: Path) -> bool:
        try:
            return path.stat().st_size >= self.options.rotate_bytes
        except FileNotFoundError:
            return False

    def _keep(self, record: dict, image: bytes) -> bool:
        """Store the image by content (once), with the answer it got; False past the cap."""
        sha = record["sha256"]
        answer = answer_path(self.data_dir, sha)
        if answer.is_file():
            return True
        if self._images_bytes + len(image) > self.options.images_max_bytes:
            self.count("images", "over_cap", 1)
            return False
        name = f"{sha}.{sniff_extension(image[:16]) or 'bin'}"
        try:
            atomic_write_bytes(images_dir(self.data_dir) / name, image)
            atomic_write_bytes(answer, json.dumps({**record, "file": name}).encode())
        except OSError as exc:
            self.count("images", "write_error", 1)
            self._problem(f"Prediction log: image {sha[:12]} not kept: {exc}")
            return False
        self._images_bytes += len(image)
        self.count("images", "kept", 1)
        return True

    def _sweep_if_due(self) -> None:
        """Delete kept images past their retention, at most once an hour."""
        if not self.keeps_images and not images_dir(self.data_dir).is_dir():
            return
        now = time.time()
        if now - self._last_sweep < RETENTION_SWEEP_S:
            return
        self._last_sweep = now
        try:
            self._images_bytes = expire_images(self.data_dir, self.options.retention_days, now)
        except OSError as exc:
            self._problem(f"Prediction log: retention sweep failed: {exc}")

    def _problem(self, message: str) -> None:
        # At most one warning a minute: a full disk must not flood the log as well.
        if time.monotonic() - self._last_problem > 60:
            logger.warning(message)
            self._last_problem = time.monotonic()


def expire_images(data_dir: Path, retention_days: float, now: float | None = None) -> int:
    """Delete kept images (and their answers) older than ``retention_days``; return the bytes
    the remaining ones take."""
    folder = images_dir(data_dir)
    if not folder.is_dir():
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    left = 0
    for path in folder.iterdir():
        if not path.is_file():
            continue
        stat = path.stat()
        if stat.st_mtime < cutoff:
            path.unlink(missing_ok=True)
        else:
            left += stat.st_size
    return left


def prediction_record(model: object, probabilities, upload, k: int = LOG_TOP_K) -> dict:
    """What the log records about one answer: ``model`` is a serving.models.LoadedModel,
    ``upload`` a serving.uploads.Upload read with its statistics."""
    order = probabilities.argsort()[::-1][:k]
    top = [
        {"label": str(model.classes[i]), "probability": round(float(probabilities[i]), 5)}
        for i in order
    ]
    return {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "model": model.name,
        "version": model.version,
        "sha256": upload.sha256,
        "bytes": len(upload.data),
        **(upload.stats or {}),
        "label": top[0]["label"],
        "confidence": top[0]["probability"],
        "top": top,
    }
