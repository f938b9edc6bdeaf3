"""Training and the sweep against a real MLflow store, on real (embedded) images."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
import torchvision
from mlflow import MlflowClient
from PIL import Image

import tasks.train
from tasks.diagnosis import MIN_STEPS
from tasks.leaderboard import best_trial
from tasks.manifest import Dataset
from tasks.recipes import RECIPES
from tasks.sweep import (
    auto_workers,
    diagnose_in_sweep,
    finish_sweep,
    latest_model_uri,
    log_best_model,
    longest_first,
    start_sweep,
    threads_per_trial,
    torch_threads_kept,
    trial_grid,
)
from tasks.tensor_cache import load_tensors, tensor_cache
from tasks.tracking import experiment_id
from tasks.train import (
    MEAN,
    STD,
    TrainConfig,
    Trial,
    TrialResult,
    augment,
    build_model,
    diagnose_fit,
    fit,
    model_inputs,
    phase_optimizer,
    seeded_model,
    set_frozen,
    training_phases,
)
from tasks.trial import batch_norm_note, run_trial
from tasks.weights import WeightsUnavailable, resolve_weights
from tests.datasets import digits_dataset, photos_dataset
from ursa.package import load_package, log_package, preprocess
from ursa.settings import Settings

SMALL = TrainConfig(image_size=16, batch_size=32)


@pytest.fixture
def dataset(data_dir) -> Dataset:
    return digits_dataset(data_dir, per_class=12, classes=4)


def test_tensor_cache_decodes_once_and_keeps_the_split(dataset: Dataset) -> None:
    path = tensor_cache(dataset, 16)
    mtime = os.path.getmtime(path)
    data = load_tensors(path)
    assert data.classes == list(dataset.classes)
    assert data.x_train.shape == (dataset.n_train, 3, 16, 16)
    assert data.x_train.dtype == torch.uint8
    assert len(data.y_valid) == dataset.n_valid
    assert tensor_cache(dataset, 16) == path and os.path.getmtime(path) == mtime
    assert not list(path.parent.glob("*.tmp"))


def test_serving_gives_the_model_what_training_gave_it(dataset: Dataset) -> None:
    data = load_tensors(tensor_cache(dataset, 16))
    images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in data.x_valid]
    served = preprocess(images, 16, MEAN, STD)
    trained = model_inputs(data.x_valid, torch.device("cpu"))  # no augmentation: validation
    torch.testing.assert_close(served, trained, atol=1e-5, rtol=0)
    # NCHW in memory, not the permuted (channels_last) view: the exported model's
    # convolutions ran up to 30% slower on that.
    assert served.is_contiguous()


def test_the_package_folds_batch_norms_and_predicts_what_the_model_does(
    data_dir, tmp_path, monkeypatch
) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # Trained-looking statistics, so that folding them in is not a no-op.
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    meta = {"arch": "resnet18", "classes": list("abc"), "image_size": 32, "mean": MEAN, "std": STD}
    monkeypatch.chdir(tmp_path)  # MLflow's default experiment would write ./mlruns here
    with mlflow.start_run(experiment_id=experiment_id(Settings.from_env())):
        package = load_package(log_package(model, meta))
    assert not (tmp_path / "mlruns").exists()
    ops = [str(node.target) for node in package.module.graph.nodes if node.op == "call_function"]
    assert any("convolution" in op or "conv2d" in op for op in ops), ops
    assert not [op for op in ops if "batch_norm" in op]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(package.module(x), model(x), atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # left as it was


def test_fit_is_seeded_and_learns(dataset: Dataset) -> None:
    data = load_tensors(tensor_cache(dataset, 16))
    first = fit(Trial(lr=3e-3, epochs=3), SMALL, data)
    again = fit(Trial(lr=3e-3, epochs=3), SMALL, data)
    assert first.step_losses == again.step_losses
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in again.history]
    assert first.history[-1]["train_loss"] < first.history[0]["train_loss"]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(first.history[0])
    assert len(first.step_losses) == 3 * math.ceil(dataset.n_train / SMALL.batch_size)


def test_a_tiny_from_scratch_trial_is_not_called_diverged(dataset: Dataset, monkeypatch) -> None:
    """Issue #21 in miniature: a few steps from scratch leave batch-norm running statistics
    near their initial values; they are recomputed before validation, and the diagnosis says
    that too few steps were taken instead of blaming the rate."""
    data = load_tensors(tensor_cache(dataset, 16))
    config = TrainConfig(image_size=16, batch_size=16)
    fitted = fit(Trial(1e-3, 1), config, data)
    (record,) = fitted.history
    assert (record["steps"], record["bn_recomputed"]) == (3, 1.0)  # 36 images: 16, 16, 4
    assert batch_norm_note(fitted.history).startswith("before the validation of epoch 1 of 1")
    d = diagnose_fit(fitted.history, fitted.step_losses[0])
    assert d.label == "too_few_steps" and "only 3 optimizer steps" in d.evidence, d.evidence
    monkeypatch.setattr("tasks.train.BN_RECOMPUTE_STEPS", 0)  # the statistics training left
    stale = fit(Trial(1e-3, 1), config, data).history[0]
    assert stale["bn_recomputed"] == 0.0 and batch_norm_note([stale]) == "no"
    assert record["val_loss"] < stale["val_loss"], (record["val_loss"], stale["val_loss"])


def test_flip_and_no_augment_reach_the_training_batches(data_dir, monkeypatch) -> None:
    data = load_tensors(str(tensor_cache(digits_dataset(data_dir, per_class=4, classes=2), 16)))
    flips: list[bool] = []
    real_augment = tasks.train.augment

    def recorded(x, generator, flip=False, *args, **kwargs):
        flips.append(flip)
        return real_augment(x, generator, flip, *args, **kwargs)

    monkeypatch.setattr(tasks.train, "augment", recorded)
    for config, want in (
        (SMALL, {False}),  # augmented, not flipped: the default, right for digits and text
        (replace(SMALL, flip=True), {True}),
        (replace(SMALL, augment=False, flip=True), set()),  # --no-augment: nothing at all
    ):
        flips.clear()
        fit(Trial(lr=1e-3, epochs=1), config, data)
        assert set(flips) == want, config


def test_pretrained_weights_are_found_in_torchvisions_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    torch.save(reference.state_dict(), checkpoints / name)
    config, note = resolve_weights(TrainConfig(pretrained=True))
    assert config.pretrained and name in note
    model = build_model(config, 3)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


def test_augment_transforms_whole_batches_reproducibly() -> None:
    x = torch.rand(6, 3, 16, 16)
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert not torch.allclose(a, x)
    # Every image gets its own transform.
    same = torch.rand(1, 3, 16, 16).expand(6, 3, 16, 16)
    out = augment(same, torch.Generator().manual_seed(2))
    assert not torch.allclose(out[0], out[1])


def test_photo_batches_are_random_crops_of_the_larger_cache(data_dir, monkeypatch) -> None:
    """The photos recipe caches pictures at 8/7 of the training size: every training batch
    is cut from it at random (the same crops for the same seed, others for another seed or
    the next epoch), every other pass at its centre; the model only ever sees the size."""
    config = TrainConfig(
        image_size=28,
        batch_size=4,
        augmentation="photos",
        flip=True,
        resize="crop",
        resize_ratio=RECIPES["photos"].resize_ratio,
    )
    data = load_tensors(tensor_cache(photos_dataset(data_dir), config.resize_size, config.resize))
    real_inputs = tasks.train.model_inputs
    shapes = set()

    def recorded(x, *args, **kwargs):
        out = real_inputs(x, *args, **kwargs)
        shapes.add((x.shape[-1], out.shape[-1]))
        return out

    monkeypatch.setattr(tasks.train, "model_inputs", recorded)
    fit(Trial(lr=1e-3, epochs=1), config, data)  # training, batch-norm statistics, validation
    assert shapes == {(32, 28)}

    x, cpu = data.x_train[:4], torch.device("cpu")

    def epochs(seed: int) -> list[torch.Tensor]:  # one generator across epochs, as fit has
        generator = torch.Generator().manual_seed(seed)
        return [real_inputs(x, cpu, generator, True, "photos", 28) for _ in range(2)]

    (first, second), (again, _), (other, _) = epochs(0), epochs(0), epochs(1)
    assert first.shape == (4, 3, 28, 28)
    assert torch.equal(first, again)
    assert not torch.allclose(first, second) and not torch.allclose(first, other)
    centre = real_inputs(x, cpu, size=28)  # validation: the centre 28 of the 32, exactly
    assert torch.equal(centre, real_inputs(x[..., 2:30, 2:30], cpu))


def test_fine_tuning_freezes_then_unfreezes_with_discriminative_rates(
    dataset: Dataset, tmp_path
) -> None:
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    config = TrainConfig(image_size=16, batch_size=16, pretrained=True, weights_path=str(weights))
    assert training_phases(Trial(1e-3, 3), config) == [("frozen", 1), ("unfrozen", 2)]
    assert training_phases(Trial(1e-3, 1), config) == [("unfrozen", 1)]
    assert training_phases(Trial(1e-3, 3), SMALL) == [("scratch", 3)]

    model = build_model(config, 4)
    set_frozen(model, True)
    assert not model.conv1.weight.requires_grad and not model.layer4[0].conv1.weight.requires_grad
    assert model.bn1.weight.requires_grad and model.fc.weight.requires_grad
    set_frozen(model, False)
    optimizer, rates = phase_optimizer(model, "unfrozen", 1e-3)
    assert rates == pytest.approx([5e-6, 5e-5, 5e-4])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(rates)
    grouped = sum(len(g["params"]) for g in optimizer.param_groups)
    assert grouped == len(list(model.parameters()))

    fitted = fit(Trial(1e-3, 2), config, load_tensors(tensor_cache(dataset, 16)))
    assert len(fitted.history) == 2
    assert all(p.requires_grad for p in fitted.model.parameters())


def test_sweep_logs_parent_children_diagnoses_and_a_loadable_model(
    dataset: Dataset, data_dir
) -> None:
    """Real runs: lr 10 diverges, 1e-6 is too slow, and the best is never the diverged one."""
    settings = Settings.from_env()
    experiment = experiment_id(settings)
    # One full batch per epoch: the loss of a step is not the noise of a small batch, so
    # "barely moved" (1e-6) and "exploded" (10) read cleanly; 10 epochs are the fewest steps
    # a diagnosis other than too_few_steps needs.
    config = TrainConfig(image_size=16, batch_size=64)
    trials = trial_grid([1e-6, 3e-3, 10.0], [MIN_STEPS])
    parent = start_sweep(experiment, config, dataset, trials)
    cache = str(tensor_cache(dataset, config.image_size))
    results = [
        run_trial(t, config, cache, experiment, parent, dataset.digest, settings.tracking_uri)
        for t in trials
    ]
    results = diagnose_in_sweep(results, settings.tracking_uri)
    by_lr = {r.lr: r for r in results}
    assert by_lr[10.0].diagnosis == "diverged", by_lr[10.0].evidence
    assert by_lr[1e-6].diagnosis == "too_slow", by_lr[1e-6].evidence
    best = best_trial(results)
    assert best.lr != 10.0 and best.diagnosis != "diverged"
    excluded = finish_sweep(
        parent, results, best, "30 of 30 grid epochs", tracking_uri=settings.tracking_uri
    )
    assert [e["trial"] for e in excluded] == [f"lr=10 epochs={MIN_STEPS}"]
    assert excluded[0]["diagnosis"] == "diverged" and excluded[0]["why"]
    model_uri = log_best_model(best, config, dataset, cache, parent, settings.tracking_uri)

    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert {c.info.run_id for c in children} == {r.run_id for r in results}
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_loss")
        assert {m.step for m in history} <= set(range(MIN_STEPS))  # a NaN loss is not logged
        steps = client.get_metric_history(child.info.run_id, "train_loss_step")
        assert len(steps) >= 1
        assert child.data.params["dataset_digest"] == dataset.digest
        assert child.data.tags["ursa.diagnosis"] == by_lr[float(child.data.params["lr"])].diagnosis
        assert child.data.tags["ursa.diagnosis_evidence"]
        assert any(k.startswith("system/") for k in child.data.metrics), child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {
            "loss_curves.png",
            "confusion_matrix.png",
            "most_confused.json",
            "top_losses.png",
        } <= artifacts
    parent_run = client.get_run(parent)
    assert parent_run.data.tags["ursa.best_run_id"] == best.run_id
    assert f"lr=10 epochs={MIN_STEPS}: diverged" in parent_run.data.tags["ursa.excluded"]
    parent_artifacts = {a.path for a in client.list_artifacts(parent)}
    assert {"leaderboard.json", "heatmap_val_accuracy.png", "excluded_trials.json"} <= (
        parent_artifacts
    )
    assert latest_model_uri(experiment, settings.tracking_uri) == model_uri

    package = load_package(model_uri, settings.tracking_uri)
    assert package.classes == list(dataset.classes)
    assert package.meta["image_size"] == 16
    assert package.meta["dataset_digest"] == dataset.digest


def _result(acc: float, loss: float, run_id: str, diagnosis: str = "good") -> TrialResult:
    return TrialResult(0.1, 1, run_id, acc, loss, loss, "", 0.0, diagnosis=diagnosis)


def test_best_trial_prefers_accuracy_then_loss_and_never_a_diverged_one() -> None:
    a = _result(0.9, 0.3, "a")
    b = _result(0.9, 0.2, "b")
    nan = _result(0.95, math.nan, "nan")
    exploded = _result(0.99, 0.1, "exploded", diagnosis="diverged")
    assert best_trial([a, b, nan, exploded]).run_id == "b"
    with pytest.raises(RuntimeError, match="diverged"):
        best_trial([nan, exploded])


def test_trial_grid_refuses_bad_values() -> None:
    assert len(trial_grid([1e-3, 1e-2], [1, 2, 3])) == 6
    with pytest.raises(ValueError, match="-0.1"):
        trial_grid([-0.1], [1])
    with pytest.raises(ValueError, match="0"):
        trial_grid([0.1], [0])
    with pytest.raises(ValueError, match="resnet99"):
        TrainConfig(arch="resnet99")


def test_pretrained_weights_come_from_a_local_file_or_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(WeightsUnavailable, match="not on this machine"):
        build_model(TrainConfig(pretrained=True), 3)
    weights = tmp_path / "resnet18.pth"
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), weights)
    model = build_model(TrainConfig(pretrained=True, weights_path=str(weights)), 3)
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert model.fc.out_features == 3


def test_missing_weights_fall_back_only_when_the_user_chose_so(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    missing = str(tmp_path / "nope.pth")
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens, the download is refused
    with pytest.raises(WeightsUnavailable, match="nope.pth"):
        resolve_weights(TrainConfig(pretrained=True, weights_path=missing), nowhere)
    config, note = resolve_weights(
        TrainConfig(pretrained=True, weights_path=missing, if_no_weights="scratch"), nowhere
    )
    assert not config.pretrained and "from scratch" in note and "nope.pth" in note
    wrong = tmp_path / "wrong.pth"
    torch.save({"not": torch.zeros(1)}, wrong)
    with pytest.raises(WeightsUnavailable, match="does not fit"):
        build_model(TrainConfig(pretrained=True, weights_path=str(wrong)), 3)
    with pytest.raises(ValueError, match="if_no_weights"):
        TrainConfig(if_no_weights="maybe")


def test_experiment_keeps_artifacts_in_the_data_folder(data_dir) -> None:
    settings = Settings.from_env()
    experiment = mlflow.get_experiment(experiment_id(settings))
    assert experiment.artifact_location.startswith((data_dir / "mlartifacts").as_uri())


def test_workers_are_chosen_per_core_up_to_the_trials_unless_given() -> None:
    cores = os.cpu_count() or 1
    assert auto_workers("threads", 3, 10) == 3
    assert auto_workers("threads", 0, 10) == min(10, cores)
    assert auto_workers("threads", 0, 1) == 1
    assert auto_workers("dask", 0, 4) == min(4, cores)
    with pytest.raises(ValueError, match="workers is -1"):
        auto_workers("threads", -1, 4)
    assert threads_per_trial("threads", 1) == 0  # one trial: torch's own default
    assert threads_per_trial("threads", 2) == max(1, cores // 2)


def test_longest_trials_are_submitted_first_in_a_stable_order() -> None:
    grid = trial_grid([1e-3, 3e-3], [1, 4, 2])
    assert [(t.lr, t.epochs) for t in longest_first(grid)] == [
        (1e-3, 4),
        (3e-3, 4),
        (1e-3, 2),
        (3e-3, 2),
        (1e-3, 1),
        (3e-3, 1),
    ]


def test_torch_threads_kept_restores_the_process_default() -> None:
    import threading

    before = torch.get_num_threads()
    with torch_threads_kept():
        worker = threading.Thread(target=torch.set_num_threads, args=(1,))
        worker.start()
        worker.join()
    seen = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert torch.get_num_threads() == before and seen == [before]


def test_models_built_in_concurrent_threads_get_the_seeds_own_weights() -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = TrainConfig(seed=7)
    expected = seeded_model(config, 4).state_dict()
    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(lambda _: seeded_model(config, 4).state_dict(), range(8)))
    for state in built:
        assert all(torch.equal(state[k], expected[k]) for k in expected)
