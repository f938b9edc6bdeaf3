"""The prediction log: every answer recorded off the request path, readable by pandas; no
request slowed or failed when the writer is stuck or the disk is full."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from serving.app import create_app
from serving.predictionlog import LogOptions, PredictionLog, expire_images
from tasks.manifest import load_dataset
from tests.digits_champion import split_images
from tests.live import LiveServer
from ursa.predictions import FIELDS, images_dir, kept_answer, log_dir, read_predictions
from ursa.settings import Settings


@pytest.fixture
def champion(digits_champion: Settings, tmp_path: Path) -> Settings:
    """The digits champion, served with a data folder (and so a log) of its own."""
    return dataclasses.replace(digits_champion, data_dir=tmp_path / "served")


@pytest.fixture(scope="module")
def images(digits_champion: Settings) -> list[bytes]:
    dataset = load_dataset(digits_champion.data_dir / "datasets" / "dataset.csv")
    return [p.read_bytes() for _, p in split_images(digits_champion.data_dir, dataset, "train")]


def send(server: LiveServer, images: list[bytes]) -> list[dict]:
    with server.client() as http:
        replies = [
            http.post("/predict", content=b, headers={"content-type": "image/png"}) for b in images
        ]
    assert [r.status_code for r in replies] == [200] * len(images)
    return [r.json() for r in replies]


def metric(server: LiveServer, series: str) -> float:
    with server.client() as http:
        text = http.get("/metrics").text
    found = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(found[0].split()[-1]) if found else 0.0


def test_every_answer_is_logged_off_the_request_path_and_pandas_reads_it(
    champion: Settings, images: list[bytes]
) -> None:
    images = images[:6] + images[:1]  # the first image twice
    app = create_app(champion)
    with LiveServer(app) as server:
        answers = send(server, images)
        assert app.state.prediction_log.drain()
        written = metric(server, 'ursa_prediction_log_records_total{outcome="written"}')
    assert written == len(images)
    assert [a["sha256"] for a in answers] == [hashlib.sha256(b).hexdigest() for b in images]
    last = read_predictions(champion.data_dir)
    assert list(last.columns) == list(FIELDS) and len(last) == len(images)
    assert list(last["sha256"]) == [a["sha256"] for a in answers]
    assert list(last["label"]) == [a["predictions"][0]["label"] for a in answers]
    assert last["version"].eq("1").all() and last["kept"].all()
    assert ((last["brightness"] > 0) & (last["brightness"] < 1)).all()
    assert (last["aspect"] == 1.0).all() and (last["width"] == 32).all()
    assert len(last["top"].iloc[0]) == 5
    # Each image kept once, by content, with the answer it got.
    kept = kept_answer(champion.data_dir, answers[0]["sha256"])
    assert kept is not None and kept["label"] == answers[0]["predictions"][0]["label"]
    assert len(list(images_dir(champion.data_dir).glob("*.png"))) == len(set(images))


def test_a_stuck_writer_drops_records_and_no_request_waits(
    champion: Settings, images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    stuck = threading.Event()
    release = threading.Event()

    def hang(self: PredictionLog, data: bytes) -> None:
        stuck.set()
        release.wait()

    monkeypatch.setattr(PredictionLog, "_append", hang)
    app = create_app(dataclasses.replace(champion, log_queue_size=3))
    with LiveServer(app) as server:
        send(server, images[:1])
        assert stuck.wait(30)  # the writer now holds one record and writes nothing
        send(server, images[1:11])  # answered although the log cannot take them
        dropped = metric(server, 'ursa_prediction_log_records_total{outcome="dropped_queue_full"}')
        assert dropped == 10 - 3
        release.set()


def test_a_full_disk_fails_no_request(
    champion: Settings, images: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: PredictionLog, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PredictionLog, "_append", full)
    app = create_app(champion)
    with LiveServer(app) as server:
        send(server, images[:4])
        assert app.state.prediction_log.drain()
        refused = metric(server, 'ursa_prediction_log_records_total{outcome="dropped_write_error"}')
    assert refused == 4


def test_sampling_off_records_nothing(champion: Settings, images: list[bytes]) -> None:
    app = create_app(dataclasses.replace(champion, log_sample=0.0))
    with LiveServer(app) as server:
        send(server, images[:3])
        assert app.state.prediction_log.drain()
    assert not log_dir(champion.data_dir).exists()


def test_files_rotate_at_the_size_limit_and_kept_images_expire(tmp_path: Path) -> None:
    counted: list[tuple[str, str, int]] = []
    log = PredictionLog(
        tmp_path,
        LogOptions(rotate_bytes=300, images_max_bytes=150),
        count=lambda *c: counted.append(c),
    )
    log.start()
    for i in range(12):
        sha = hashlib.sha256(bytes([i])).hexdigest()
        record = {"at": "2026-11-30T00:00:00+00:00", "sha256": sha, "label": "1"}
        log.offer(record, b"\x89PNG\r\n\x1a\n" + bytes(92))  # 100 bytes each
        assert log.drain()  # one record a write, so the size limit is checked each time
    log.stop()
    files = sorted(log_dir(tmp_path).glob("predictions-*.jsonl"))
    assert len(files) >= 3
    frame = read_predictions(tmp_path)
    assert len(frame) == 12 and frame["kept"].sum() == 1  # the cap holds one image
    assert ("images", "over_cap", 1) in counted
    old = time.time() - 3 * 86400
    for path in images_dir(tmp_path).iterdir():
        os.utime(path, (old, old))
    assert expire_images(tmp_path, retention_days=2) == 0
    assert not any(images_dir(tmp_path).iterdir())
