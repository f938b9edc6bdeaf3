"""The ranking of suspect images: folds, scores, flags, the files and the MLflow run.

How well the ranking finds flipped labels is measured in benchmarks/bench_cleaning.py on the
whole embedded default; here the data is small and the checks are about correctness.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

import tasks.cleaning
from tasks.cleaning import (
    _decode,
    class_thresholds,
    probabilities,
    rank_dataset,
    rank_images,
)
from tasks.cleaning_report import log_ranking
from tasks.manifest import Dataset, ImageRow, read_rows, write_dataset
from tasks.splits import fold_of
from tasks.tensor_cache import Tensors
from tasks.train import TrainConfig
from tests.datasets import digits_dataset
from tests.runs import artifacts
from ursa.ranking import ordered, read_ranking
from ursa.settings import Settings


def _row(sha: str, label: str, group: str = "", status: str = "kept") -> ImageRow:
    return ImageRow(
        sha256=sha,
        image_path=f"images/{sha}.png",
        label=label,
        url="",
        width=8,
        height=8,
        pixel_hash=sha,
        phash="0" * 16,
        group=group or sha,
        status=status,
        split="train" if status == "kept" else "",
    )


def test_folds_are_stratified_deterministic_and_keep_groups_together() -> None:
    rows = [_row(f"{c}{i}", c) for c in "abc" for i in range(10)]
    folds = fold_of(rows, 4, seed=0)
    assert folds.tolist() == fold_of(rows, 4, seed=0).tolist()
    assert folds.tolist() != fold_of(rows, 4, seed=1).tolist()
    for label in "abc":
        counts = np.bincount(folds[[r.label == label for r in rows]], minlength=4)
        assert counts.max() - counts.min() <= 1, counts
    grouped = [_row("x1", "a", group="g"), _row("x2", "a", group="g"), _row("y", "a")]
    f = fold_of(grouped, 2)
    assert f[0] == f[1]
    with pytest.raises(ValueError, match="at least 2"):
        fold_of(rows, 1)


def test_rank_images_scores_orders_and_flags() -> None:
    classes = ["a", "b", "c"]
    rows = [
        _row("fine", "a"),
        _row("flipped", "a"),  # the model says b with confidence
        _row("unsure", "b"),
        _row("dup", "c", group="dupgroup"),
        _row("conflict", "b", group="conflictgroup", status="label_conflict"),
    ]
    probs = np.array(
        [
            [0.90, 0.05, 0.05],
            [0.05, 0.90, 0.05],
            [0.30, 0.40, 0.30],
            [0.10, 0.10, 0.80],
            [0.70, 0.20, 0.10],
        ]
    )
    manifest = rows + [_row("dup-copy", "c", group="dupgroup", status="near_duplicate")]
    ranked = rank_images(rows, probs, classes, ["fold 1 of 2"] * 5, manifest)
    assert [r.sha256 for r in ranked] == ["flipped", "conflict", "unsure", "dup", "fine"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4, 5]
    top = ranked[0]
    assert (top.given, top.predicted, top.confidence) == ("a", "b", 0.9)
    assert top.self_confidence == pytest.approx(0.05)
    assert top.margin == pytest.approx(0.05 - 0.90)
    assert top.loss == pytest.approx(-np.log(0.05), rel=1e-5)
    flags = {r.sha256: r.flags.split(";") for r in ranked}
    assert "confident_issue" in flags["flipped"]
    assert "confident_issue" not in flags["fine"]
    assert "label_conflict" in flags["conflict"]
    assert flags["dup"][0] == "near_duplicates"
    assert next(r for r in ranked if r.sha256 == "dup").duplicates == 1
    # Loss orders as self-confidence does; margin may differ.
    assert [r.sha256 for r in ordered(ranked, "loss")] == [r.sha256 for r in ranked]
    assert ordered(ranked, "margin")[0].sha256 == "flipped"
    with pytest.raises(ValueError, match="not one of"):
        ordered(ranked, "random")


def test_class_thresholds_are_the_mean_probability_of_each_class_on_its_images() -> None:
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    t = class_thresholds(probs, np.array([0, 0, 1]), 3)
    assert t.tolist() == pytest.approx([0.7, 0.9, 1.0])


def with_a_label_conflict(dataset: Dataset, data_dir: Path) -> Dataset:
    """``dataset`` plus one picture (a 3, a class it does not have) under labels 0 and 1."""
    source = sorted((data_dir / "embedded" / "3").glob("*.png"))[0]
    image = Image.open(source).convert("RGB")
    image.save(data_dir / "images" / "conflict.png")
    conflict = ImageRow(
        sha256="conflict",
        image_path="images/conflict.png",
        label="0",
        url="",
        width=image.width,
        height=image.height,
        pixel_hash="conflict",
        phash="0" * 16,
        group="conflict",
        status="label_conflict",
    )
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    return write_dataset(data_dir, rows + [conflict, replace(conflict, label="1")])


def test_rank_dataset_scores_every_image_out_of_sample_and_logs_to_mlflow(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset = with_a_label_conflict(digits_dataset(data_dir, per_class=10, classes=3), data_dir)
    config = TrainConfig(image_size=16, batch_size=16)
    fits: list[tuple[Tensors, torch.nn.Module]] = []
    real_fit = tasks.cleaning.fit

    def recorded_fit(trial, config, data, on_epoch=None):
        result = real_fit(trial, config, data, on_epoch)
        fits.append((data, result.model))
        return result

    monkeypatch.setattr(tasks.cleaning, "fit", recorded_fit)
    folds_done = []
    ranking = rank_dataset(
        dataset,
        folds=2,
        lr=3e-3,
        epochs=1,
        config=config,
        on_fold=lambda k, n: folds_done.append(k),
    )
    assert folds_done == [1, 2]

    # Out of sample, checked where the models are fitted (not by re-deriving the folds): each
    # model trains on images it is not then asked about, and the held-out sets cover every
    # kept image exactly once.
    def images(x: torch.Tensor) -> list[bytes]:
        return [bytes(image.numpy().tobytes()) for image in x]

    everything: list[bytes] = []
    for data, _ in fits:
        train, held = images(data.x_train), images(data.x_valid)
        assert len(set(train + held)) == len(train) + len(held) == 30
        everything += held
    assert len(set(everything)) == len(everything) == 30

    ranked, meta = read_ranking(data_dir)
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    kept = [r for r in rows if r.status == "kept"]
    assert sorted(r.sha256 for r in ranked if r.status == "kept") == sorted(r.sha256 for r in kept)
    assert len(kept) == 30 and ranking.n_images == 32  # and the conflict, once per label
    assert [r.self_confidence for r in ranked] == sorted(r.self_confidence for r in ranked)
    assert {r.source for r in ranked if r.status == "kept"} == {"fold 1 of 2", "fold 2 of 2"}
    for r in ranked:
        assert 0.0 <= r.self_confidence <= r.confidence <= 1.0
        assert r.predicted in dataset.classes and r.given in dataset.classes

    # The label conflict was seen by no model: the mean of the fold models scores it, once
    # per label.
    conflicts = {r.given: r for r in ranked if r.status == "label_conflict"}
    assert sorted(conflicts) == ["0", "1"]
    picture = _decode(
        [next(r for r in rows if r.status == "label_conflict")], data_dir, 16, "squash"
    )
    mean = np.mean(
        [probabilities(model, picture, torch.device("cpu"))[0] for _, model in fits], axis=0
    )
    for label, r in conflicts.items():
        assert r.source == "mean of 2 fold models" and "label_conflict" in r.flags
        assert r.self_confidence == pytest.approx(float(mean[int(label)]), rel=1e-4)
    assert meta["dataset_digest"] == dataset.digest and meta["folds"] == 2
    assert meta["classes"] == list(dataset.classes)

    mlflow.set_tracking_uri(f"sqlite:///{data_dir / 'mlflow.db'}")
    experiment = mlflow.create_experiment("clean", (data_dir / "mlartifacts").as_uri())
    run_id = log_ranking(ranking, experiment, data_dir)
    run = mlflow.get_run(run_id)
    assert run.data.tags["ursa.role"] == "clean"
    assert run.data.params["dataset_digest"] == dataset.digest
    assert run.data.params["ledger_digest"] == "none"
    assert run.data.metrics["images_ranked"] == 32
    client = MlflowClient()
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"ranking.json", "top_suspects.png", "cleaning"} <= names
    table = json.loads(Path(client.download_artifacts(run_id, "ranking.json")).read_text())
    assert len(table["data"]) == 32
    grid = Path(client.download_artifacts(run_id, "top_suspects.png")).read_bytes()
    assert grid[:4] == b"\x89PNG"


@pytest.mark.usefixtures("prefect_harness")
def test_pipeline_with_clean_uses_the_ledger_ranks_and_links_the_review_page(
    data_dir: Path,
) -> None:
    import hashlib

    from flows.ingest import ingest
    from flows.pipeline import pipeline
    from ursa.ledger import ledger_path, record

    first = ingest(source="embedded", max_per_class=5, timeout_s=3.0).dataset
    victim = next(r for r in read_rows(Path(first.manifest_path), ImageRow) if r.status == "kept")
    record(ledger_path(data_dir), "alice", victim.sha256, "remove")

    state = pipeline(
        source="embedded",
        max_per_class=5,
        lrs=[3e-3],
        epochs=[1],
        image_size=16,
        clean=True,
        return_state=True,
    )
    result = state.result()
    dataset = result.ingest.dataset
    digest = hashlib.sha256(ledger_path(data_dir).read_bytes()).hexdigest()
    assert dataset.ledger_digest == digest and dataset.digest != first.digest
    sweep = mlflow.get_run(result.train.parent_run_id).data.params
    assert sweep["ledger_digest"] == digest
    assert sweep["ledger_path"] == str(ledger_path(data_dir).resolve())

    assert result.clean is not None
    settings = Settings.from_env()
    assert result.clean.review_url == f"http://{settings.serve_host}:{settings.serve_port}/review"
    ranked, meta = read_ranking(data_dir)
    assert meta["dataset_digest"] == dataset.digest
    assert victim.sha256 not in {r.sha256 for r in ranked}
    clean_run = mlflow.get_run(result.clean.run_id)
    assert clean_run.data.params["ledger_digest"] == digest

    assert {"review-link", "clean-summary"} <= set(artifacts(state.state_details.flow_run_id))
