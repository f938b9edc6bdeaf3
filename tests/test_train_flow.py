"""The train flow under Prefect's test harness, against a real MLflow store: successive
halving on concurrent threads, trials on a local Dask cluster of 2 worker processes, and
missing pretrained weights from the command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from app.cli import main
from flows.train import train
from tasks.lr_find import centred_lrs
from tasks.sweep import auto_workers
from tests.datasets import digits_dataset
from tests.runs import artifacts
from ursa.settings import Settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def manifest(data_dir: Path) -> str:
    return digits_dataset(data_dir, per_class=12, classes=4).manifest_path


def _children(parent: str) -> list:
    client = MlflowClient(Settings.from_env().tracking_uri)
    return client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`ursa.role` = 'trial'",
    )


def test_halving_on_concurrent_threads_reports_the_epochs_it_saved(manifest: str) -> None:
    result = train(
        dataset_manifest=manifest,
        lrs=[1e-3, 3e-3, 1e-2],
        epochs=[1, 2],
        image_size=16,
        batch_size=8,
        mode="halving",
        eta=3,
        workers=2,
    )
    # Rung 1: three rates for 1 epoch; rung 2: the best one for 2 epochs.
    assert sorted((t.epochs, t.lr) for t in result.trials)[:3] == [
        (1, 1e-3),
        (1, 3e-3),
        (1, 1e-2),
    ]
    assert [t.epochs for t in result.trials].count(2) == 1
    assert result.budget.startswith("5 of 9 grid epochs")
    assert all(t.diagnosis for t in result.trials)
    assert len(_children(result.parent_run_id)) == 4
    tags = MlflowClient(Settings.from_env().tracking_uri).get_run(result.parent_run_id).data.tags
    assert tags["ursa.budget"] == result.budget
    assert tags["ursa.model_uri"] == result.model_uri
    # 3 validation images per class: the numbers are flagged on the sweep and every trial.
    assert any("fewer than 10 validation images" in w for w in result.warnings)
    assert tags["ursa.data_warnings"] == "; ".join(result.warnings)
    for child in _children(result.parent_run_id):
        assert child.data.tags["ursa.data_warnings"] == tags["ursa.data_warnings"]
        assert child.data.tags["ursa.bn_recomputed"].startswith("before the validation")


def test_trials_run_on_a_local_dask_cluster_of_two_worker_processes(manifest: str) -> None:
    result = train(
        dataset_manifest=manifest,
        lrs=[1e-3, 3e-3],
        epochs=[1],
        image_size=16,
        batch_size=8,
        runner="dask",
        workers=2,
    )
    children = _children(result.parent_run_id)
    assert {c.info.run_id for c in children} == {t.run_id for t in result.trials}
    workers = {c.data.tags["ursa.worker"].rsplit(":", 1)[1] for c in children}
    assert str(os.getpid()) not in workers, "trials ran in the test process, not on Dask"
    assert result.model_uri.startswith("models:/")


def test_centred_rates_train_on_an_existing_dask_cluster(manifest: str) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        worker_pids = {str(pid) for pid in client.run(os.getpid).values()}
        result = train(
            dataset_manifest=manifest,
            lrs=[1e-3, 1e-2],
            epochs=[1],
            image_size=16,
            batch_size=8,
            centre_lrs=True,
            lr_find_iters=10,
            runner="dask",
            dask_address=cluster.scheduler_address,
        )
    # --centre-lrs: as many rates as given, 3x apart around the range test's suggestion.
    assert result.lr_suggestion is not None
    assert sorted(t.lr for t in result.trials) == centred_lrs(result.lr_suggestion, 2)
    children = _children(result.parent_run_id)
    assert {c.data.tags["ursa.worker"].rsplit(":", 1)[1] for c in children} <= worker_pids


def test_train_options_reach_the_flow_from_the_command_line(
    manifest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.train

    given: dict = {}

    def recorded(**kwargs):
        given.update(kwargs)
        raise SystemExit(0)  # the flow itself is tested above

    monkeypatch.setattr(flows.train, "train", recorded)
    argv = ["train", "--dataset", manifest, "--flip", "--no-augment", "--centre-lrs"]
    argv += ["--runner", "dask", "--dask-address", "tcp://10.0.0.1:8786"]
    with pytest.raises(SystemExit):
        main(argv)
    assert (given["flip"], given["augment"], given["centre_lrs"]) == (True, False, True)
    assert (given["runner"], given["dask_address"]) == ("dask", "tcp://10.0.0.1:8786")
    given.clear()
    with pytest.raises(SystemExit):
        main(["train", "--dataset", manifest])
    # Options not given are not passed on: the flow's defaults and its recipe's apply.
    assert not {"flip", "augment", "centre_lrs", "runner", "dask_address"} & set(given), given


def test_missing_pretrained_weights_give_a_clear_message_not_a_traceback(
    manifest: str, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("URSA_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # offline: refused at once
    missing = str(tmp_path / "resnet18.pth")
    code = main(["train", "--dataset", manifest, "--pretrained", "--weights", missing])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("ursa: error: Pretrained weights for 'resnet18' were not found")
    assert "resnet18.pth" in err and "--if-no-weights scratch" in err


def test_a_one_class_dataset_is_refused_before_training_naming_its_classes(
    data_dir: Path, capsys
) -> None:
    one_class = digits_dataset(data_dir, per_class=12, classes=1).manifest_path
    assert main(["train", "--dataset", one_class, "--epochs", "1", "--image-size", "16"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("ursa: error:"), err
    assert "at least 2 classes" in err and "0: 9 train / 3 valid" in err, err
    # The flow refuses it too (a run started from the UI), and says so in an artifact.
    state = train(dataset_manifest=one_class, epochs=[1], image_size=16, return_state=True)
    assert state.is_failed()
    assert "dataset-check" in artifacts(state.state_details.flow_run_id)
    client = MlflowClient(Settings.from_env().tracking_uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_default_grid_runs_trials_side_by_side_and_logs_its_time(manifest: str) -> None:
    threads_before = torch.get_num_threads()
    result = train(dataset_manifest=manifest, lrs=[1e-3], epochs=[2, 4], image_size=16)
    expected = auto_workers("threads", 0, 2)
    assert result.workers == expected == min(2, os.cpu_count() or 1)
    assert [t.epochs for t in result.trials] == [2, 4]  # grid order, whatever order they ran
    client = MlflowClient(Settings.from_env().tracking_uri)
    if expected > 1:
        # When each trial finished its epochs (the best trial's run is reopened later to log
        # the model, so its end_time says nothing about when it trained): each trial ended
        # an epoch before the other one's last.
        short, long = (
            [m.timestamp for m in client.get_metric_history(t.run_id, "val_loss")]
            for t in result.trials
        )
        assert short[0] < long[-1] and long[0] < short[-1], "the trials did not run side by side"
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["sweep_seconds"] == pytest.approx(result.sweep_seconds)
    assert result.sweep_seconds > 0
    # Trials in threads set torch's thread count; the flow puts the process default back.
    assert torch.get_num_threads() == threads_before


def test_one_at_a_time_the_longest_trial_goes_first(manifest: str) -> None:
    result = train(dataset_manifest=manifest, lrs=[1e-3], epochs=[1, 3], image_size=16, workers=1)
    client = MlflowClient(Settings.from_env().tracking_uri)
    short, long = (
        [m.timestamp for m in client.get_metric_history(t.run_id, "val_loss")]
        for t in result.trials
    )
    assert long[-1] <= short[0], "the 3-epoch trial did not run before the 1-epoch one"


def test_compile_from_the_command_line_trains_the_same_model_compiled(manifest: str) -> None:
    # torch.compile on a CPU takes about a minute here; it is an option for GPUs, but the
    # compiled model must learn exactly what the eager one does wherever it runs.
    args = ["--dataset", manifest, "--lr", "3e-3", "--epochs", "2", "--image-size", "16"]
    assert main(["train", *args, "--compile"]) == 0
    eager = train(dataset_manifest=manifest, lrs=[3e-3], epochs=[2], image_size=16)
    client = MlflowClient(Settings.from_env().tracking_uri)
    experiment = client.get_run(eager.parent_run_id).info.experiment_id
    (compiled,) = client.search_runs(
        [experiment], filter_string="params.compile = 'True' and tags.`ursa.role` = 'trial'"
    )
    assert client.get_run(eager.trials[0].run_id).data.params["compile"] == "False"

    def losses(run_id: str) -> list[float]:
        return [m.value for m in client.get_metric_history(run_id, "train_loss")]

    assert len(losses(compiled.info.run_id)) == 2
    assert losses(compiled.info.run_id) == pytest.approx(losses(eager.trials[0].run_id), rel=1e-3)
