"""The ``ursa`` command as people meet it: one-line errors with the way out, exit status 2
and no traceback, checked before anything starts; a bug's traceback in a file; ``ursa
status`` on an empty and on a trained data folder; the flows' defaults as the only ones."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from app import cli
from app.status import print_status
from tests.datasets import digits_dataset
from tests.test_release import log_models
from ursa.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def ursa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a person would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_importing_the_ingest_flow_imports_neither_torch_nor_mlflow() -> None:
    code = "import sys, flows.ingest; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train"], "no dataset yet in {data}. Run 'ursa ingest SOURCE' first"),
        (["ingest", "missing-folder/"], "no URL lists at 'missing-folder/'. Give a folder"),
        (["release"], "no trained model yet in sqlite:///{data}/mlflow.db. Run 'ursa train'"),
        (["ingest", "--concurrency", "0", "embedded"], "--concurrency 0: input should be greater"),
        (["train", "--epochs", "0"], "--epochs 0: input should be greater than or equal to 1"),
        (["monitor", "--window-hours", "0"], "--window-hours 0: input should be greater than 0"),
        (["rollback"], "nothing released yet in sqlite:///{data}/mlflow.db. Run 'ursa release'"),
        (
            ["release", "--model-uri", "models:/m-1", "--serve-url", "http://127.0.0.1:9"],
            "redeploying the server at http://127.0.0.1:9 needs its admin token. Set URSA_",
        ),
    ],
)
def test_what_the_user_can_fix_is_one_line_with_the_way_out(
    args: list[str], message: str, data_dir: Path
) -> None:
    # Prefect's temporary server is never reached: each check comes before any flow starts.
    done = ursa(*args, env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr  # one line
    assert done.stderr.startswith(f"ursa: error: {message.format(data=data_dir)}"), done.stderr
    assert not (data_dir / "mlflow.db").exists()


def test_a_bad_setting_is_one_line_too(data_dir: Path) -> None:
    done = ursa("status", env={"URSA_SERVE_PORT": "eighty"})
    assert done.returncode == 2
    assert done.stderr.startswith("ursa: error: Config 'URSA_SERVE_PORT' has value 'eighty'")
    assert "Traceback" not in done.stderr


def test_a_bug_prints_a_short_line_and_where_the_traceback_is(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def broken(args: object, settings: Settings) -> int:
        raise KeyError("no such thing")

    monkeypatch.setattr(cli, "cmd_status", broken)
    assert cli.main(["status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ursa: internal error: KeyError: 'no such thing'. The full traceback")
    (log,) = (data_dir / "logs").glob("crash-*.log")
    assert str(log) in err and "Traceback" not in err
    assert "raise KeyError" in log.read_text()
    with pytest.raises(KeyError):  # --debug: the traceback itself
        cli.main(["status", "--debug"])


def test_train_and_clean_take_the_same_dataset_and_input_options() -> None:
    argv = ["--dataset", "d.csv", "--image-size", "24", "--resize", "pad", "--seed", "3"]
    for command in ("train", "clean"):
        args = cli.build_parser().parse_args([command, *argv, "--arch", "resnet18"])
        given = (args.dataset_manifest, args.image_size, args.resize, args.seed, args.arch)
        assert given == ("d.csv", 24, "pad", 3, "resnet18"), command


def test_options_not_given_are_left_to_the_flow_and_help_shows_its_defaults() -> None:
    import inspect

    from flows.ingest import ingest

    args = cli.build_parser().parse_args(["ingest"])
    assert set(vars(args)) == {"command", "func", "verbose", "debug"}
    given = cli.build_parser().parse_args(["ingest", "--timeout", "3", "--fresh"])
    assert (given.timeout_s, given.fresh) == (3.0, True)  # the flow's own parameter names
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["ingest"].format_help()
    for name in ("concurrency", "per_host", "valid_pct"):
        default = inspect.signature(ingest.fn).parameters[name].default
        assert f"(default {default:g})" in " ".join(help_text.split()), name


def test_a_running_stack_is_where_runs_report(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "URSA_SERVE_URL", "URSA_ADMIN_TOKEN"):
        monkeypatch.setenv(key, "")  # put back as it was afterwards, whatever happens here
        monkeypatch.delenv(key)
    stack_env = {
        "PREFECT_API_URL": "http://127.0.0.1:4321/api",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5432",
        "URSA_SERVE_URL": "http://127.0.0.1:8765",
        "URSA_ADMIN_TOKEN": "t0ken",
    }
    write_stack_state(data_dir, stack_env)
    settings = cli.report_to_running_stack(Settings.from_env())
    assert os.environ["PREFECT_API_URL"] == stack_env["PREFECT_API_URL"]
    assert (settings.tracking_uri, settings.serve_url, settings.admin_token) == (
        "http://127.0.0.1:5432",
        "http://127.0.0.1:8765",
        "t0ken",
    )
    assert "Prefect at http://127.0.0.1:4321 ('ursa up')" in cli.reporting_to(settings)
    (data_dir / "stack.json").unlink()  # gone: the address is only the environment's now
    assert "Prefect at http://127.0.0.1:4321/api (PREFECT_API_URL)" in cli.reporting_to(settings)


def write_stack_state(data_dir: Path, client_env: dict[str, str]) -> None:
    """What ``ursa up`` writes, with this test process standing in for its services."""
    urls = {
        "Prefect UI": client_env["PREFECT_API_URL"].removesuffix("/api"),
        "MLflow UI": client_env["MLFLOW_TRACKING_URI"],
        "Model API": f"{client_env['URSA_SERVE_URL']}/predict",
        "Upload page": f"{client_env['URSA_SERVE_URL']}/",
    }
    services = [{"name": "prefect-server", "pid": os.getpid(), "signal": 15}]
    state = {"urls": urls, "client_env": client_env, "services": services}
    (data_dir / "stack.json").write_text(json.dumps(state))


def test_status_of_an_empty_data_folder_says_what_to_run_first(tmp_path: Path) -> None:
    data = tmp_path / "never-used"
    env = {"URSA_DATA_DIR": str(data), "MLFLOW_TRACKING_URI": "", "URSA_SERVE_URL": ""}
    done = ursa("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["data_dir"] == str(data) and not report["data_dir_exists"]
    assert report["dataset"] is None and report["last_sweep"] is None
    assert report["versions"] == [] and report["served"] is None
    assert report["stack"] == {"running": False, "urls": {}}
    text = ursa("status", env=env)
    assert "none yet: run 'ursa ingest SOURCE'" in text.stdout
    assert "none yet: run 'ursa train'" in text.stdout
    assert not data.exists()  # looking creates nothing


@pytest.fixture
def version_server() -> Iterator[str]:
    """A stand-in model server that answers /version."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"model": "ursa", "version": "1"}).encode()
            self.send_response(200 if self.path == "/version" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_status_of_a_trained_data_folder(data_dir: Path, version_server: str) -> None:
    from tasks.leaderboard import best_trial
    from tasks.registry import release_model
    from tasks.sweep import diagnose_in_sweep, finish_sweep, start_sweep, trial_grid
    from tasks.tensor_cache import tensor_cache
    from tasks.tracking import experiment_id
    from tasks.train import TrainConfig
    from tasks.trial import run_trial

    dataset = digits_dataset(data_dir, per_class=8, classes=3)
    settings = Settings.from_env()
    experiment = experiment_id(settings)
    config = TrainConfig(image_size=16, batch_size=32)
    trials = trial_grid([3e-3], [1])
    parent = start_sweep(experiment, config, dataset, trials)
    cache = str(tensor_cache(dataset, config.image_size))
    uri = settings.tracking_uri
    results = [run_trial(trials[0], config, cache, experiment, parent, dataset.digest, uri)]
    results = diagnose_in_sweep(results, uri)
    best = best_trial(results)
    finish_sweep(parent, results, best, tracking_uri=uri)
    # The registered version: a tiny package (exporting the trial's resnet costs far more).
    model_uri = log_models(settings, list(dataset.classes), ["c0"])["c0"]
    release_model(model_uri, dataset, settings.model_name, settings.tracking_uri)
    write_stack_state(
        data_dir,
        {
            "PREFECT_API_URL": "http://127.0.0.1:4321/api",
            "MLFLOW_TRACKING_URI": settings.tracking_uri,  # the stack's MLflow is this store
            "URSA_SERVE_URL": version_server,
            "URSA_ADMIN_TOKEN": "t0ken",
        },
    )

    done = ursa("status", "--json", env={"URSA_SERVE_URL": ""})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    d = report["dataset"]
    assert d["digest"] == dataset.digest and d["classes"] == list(dataset.classes)
    assert d["images"][dataset.classes[0]] == {"train": 6, "valid": 2}
    sweep = report["last_sweep"]
    assert sweep["run_id"] == parent and sweep["best_trial"] == "lr=0.003 epochs=1"
    assert sweep["diagnosis"] == best.diagnosis and sweep["started"]
    (version,) = report["versions"]
    assert version["version"] == "1" and version["aliases"] == ["champion"]
    assert version["gate"] == "promoted" and version["gate_reason"] == "no champion yet"
    assert report["served"] == {"url": version_server, "version": "1", "error": ""}
    assert report["stack"]["running"]
    assert report["stack"]["urls"]["Prefect UI"] == "http://127.0.0.1:4321"

    shown = io.StringIO()
    print_status(report, Console(file=shown, width=200))
    text = shown.getvalue()
    assert f"{dataset.digest[:12]}  3 classes, 18 train / 6 valid" in text
    assert "@champion" in text and "promoted" in text
    assert f"v1 at {version_server}" in text


@pytest.mark.parametrize("command", sorted(cli.FLOWS))
def test_the_checks_read_the_same_annotations_the_flow_has(command: str) -> None:
    import importlib
    import typing

    from app.parameters import flow_annotations

    module, name = cli.FLOWS[command]
    flow = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    hints.pop("return", None)
    ours = flow_annotations(module, name)
    assert {k: repr(v) for k, v in ours.items()} == {k: repr(hints[k]) for k in ours}
    # Left out only where the annotation calls code (a validator): the CLI's option type checks.
    assert all("function" in repr(hints[k]) for k in set(hints) - set(ours)), set(hints) - set(ours)
