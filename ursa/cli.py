"""The ``ursa`` command: one subcommand per stage, each a thin front on a flow or the server.

Options a user does not give are not passed on (``argparse.SUPPRESS``), so the flows' own
defaults apply; ``--help`` shows them, read from the flows (:mod:`ursa.parameters`), and the
values given are checked against the flows' parameter annotations before anything starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ursa.offline import set_offline_defaults  # noqa: E402

# Before Prefect and MLflow are imported. Prefect gives its temporary server 20 s to start,
# which a busy machine misses.
set_offline_defaults(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90")

from rich.console import Console  # noqa: E402

from ursa.errors import UsageError, one_line, user_fixable, write_traceback  # noqa: E402
from ursa.settings import Settings  # noqa: E402

console = Console()


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1e-3,3e-3; got '{text}'") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers like 2,4; got '{text}'") from None


def _default_dataset(settings: Settings) -> str:
    return str(settings.data_dir / "datasets" / "dataset.csv")


def _dataset(args: argparse.Namespace, settings: Settings) -> str:
    """The dataset manifest to use, checked to exist: a missing one is the usual first error."""
    given = getattr(args, "dataset_manifest", "")
    path = Path(given or _default_dataset(settings)).expanduser()
    if not path.with_suffix(".json").is_file():
        if given:
            raise UsageError(
                f"no dataset at '{given}'", "Give a dataset.csv that 'ursa ingest' wrote"
            )
        raise UsageError(f"no dataset yet in {settings.data_dir}", "Run 'ursa ingest SOURCE' first")
    return str(path.resolve())


def _source(args: argparse.Namespace) -> None:
    source = getattr(args, "source", "embedded")
    if source != "embedded" and not Path(source).expanduser().exists():
        raise UsageError(
            f"no URL lists at '{source}'",
            "Give a folder of <class>.txt files, one such file, a folder of class folders "
            "of images, or 'embedded'",
        )


def _serve_target(args: argparse.Namespace, settings: Settings) -> None:
    """A server to redeploy needs its admin token: say so before anything is registered."""
    target = getattr(args, "serve_url", "") or settings.serve_url
    if target and not settings.admin_token:
        raise UsageError(
            f"redeploying the server at {target} needs its admin token",
            "Set URSA_ADMIN_TOKEN to the server's token, or leave out --serve-url and "
            "URSA_SERVE_URL to skip the redeploy",
        )


def checked_arguments(args: argparse.Namespace, **filled: Any) -> dict[str, Any]:
    """The options given for the command's flow (plus ``filled``), checked against the flow's
    parameter annotations, read from its source: a typo costs no import of the flow."""
    from ursa.parameters import check_arguments, flow_parameters

    module, flow = FLOWS[args.command]
    names = flow_parameters(module, flow)
    arguments = {k: v for k, v in vars(args).items() if k in names} | filled
    check_arguments(module, flow, arguments, args.option_names, args.command)
    return arguments


def run_flow(
    flow: Any, arguments: dict[str, Any], args: argparse.Namespace, settings: Settings
) -> Any:
    """Run ``flow`` quietly: Prefect's and MLflow's INFO logs go to the data folder's log file
    (``-v``: the console too). The first line says where the run reports to."""
    log_file = quiet_logs(args, settings)
    console.print(f"[dim]{reporting_to(settings)}; logs in {log_file}[/dim]", soft_wrap=True)
    return flow(**arguments)


def quiet_logs(args: argparse.Namespace, settings: Settings) -> Path:
    from ursa.logs import route_logs

    log_file = settings.data_dir / "logs" / "ursa.log"
    route_logs(log_file, args.verbose, _debug(args))
    return log_file


def reporting_to(settings: Settings) -> str:
    from ursa.stack import running_stack

    api = os.environ.get("PREFECT_API_URL", "")
    stack = running_stack(settings.data_dir)
    if stack and stack.get("client_env", {}).get("PREFECT_API_URL") == api:
        prefect = f"Prefect at {stack['urls']['Prefect UI']} ('ursa up')"
    elif api:
        prefect = f"Prefect at {api} (PREFECT_API_URL)"
    else:
        prefect = "a temporary Prefect server ('ursa up' keeps one, with its UI)"
    return f"Reporting to {prefect}, MLflow at {settings.tracking_uri}"


def report_to_running_stack(settings: Settings) -> Settings:
    """When ``ursa up`` runs on this data folder, report to its Prefect server, MLflow and
    model server, unless the environment names others. Before Prefect is imported."""
    from ursa.stack import running_stack

    stack = running_stack(settings.data_dir)
    if stack is None:
        return settings
    for key, value in stack.get("client_env", {}).items():
        if value and not os.environ.get(key):  # set and empty reads as unset, as in Settings
            os.environ[key] = value
    return Settings.from_env()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import flows.pipeline  # noqa: F401  (Prefect and MLflow set up their loggers on import)
    from ursa.demo import run_demo

    quiet_logs(args, settings)
    run_demo(settings, console)
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    _source(args)
    arguments = checked_arguments(args)
    from flows.ingest import ingest

    result = run_flow(ingest, arguments, args, settings)
    from rich.table import Table

    table = Table(title="URL outcomes")
    table.add_column("outcome")
    table.add_column("URLs", justify="right")
    for outcome, count in result.outcomes.items():
        table.add_row(outcome, str(count))
    table.add_section()
    table.add_row("total", str(sum(result.outcomes.values())))
    console.print(table)
    statuses = Table(title="Dataset")
    statuses.add_column("status")
    statuses.add_column("images", justify="right")
    for status, count in result.statuses.items():
        statuses.add_row(status, str(count))
    console.print(statuses)
    console.print(f"URL manifest: {result.url_manifest}")
    console.print(
        f"Dataset manifest: {result.dataset.manifest_path} (digest {result.dataset.digest[:12]})"
    )
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args) | {"dataset_manifest": _dataset(args, settings)}
    from flows.train import train
    from tasks.train import TrainConfig, resolve_weights

    if arguments.get("pretrained"):  # missing weights: say so before anything starts
        given = {k: v for k, v in arguments.items() if k in TrainConfig.__dataclass_fields__}
        resolve_weights(TrainConfig(**given))
    result = run_flow(train, arguments, args, settings)
    for t in sorted(result.trials, key=lambda t: (not t.usable, -t.val_accuracy)):
        mark = "  <- best" if t.run_id == result.best.run_id else ""
        console.print(
            f"lr={t.lr:<8g} epochs={t.epochs:<3} val_accuracy={t.val_accuracy:.4f} "
            f"val_loss={t.val_loss:.4f} {t.diagnosis:<12}{mark}"
        )
    for e in result.excluded:
        console.print(f"excluded {e['trial']}: {e['diagnosis']} ({e['why']})")
    if result.lr_suggestion is not None:
        console.print(f"lr_find suggests {result.lr_suggestion:.2g}")
    console.print(f"Trained {result.budget}. Weights: {result.weights}")
    console.print(f"Model: {result.model_uri} (MLflow parent run {result.parent_run_id})")
    return 0


def cmd_sgd(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args)
    from flows.sgd import sgd_from_scratch

    run_flow(sgd_from_scratch, arguments, args, settings)
    return 0


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    model_uri = getattr(args, "model_uri", "") or _latest_model_uri(settings)
    _serve_target(args, settings)
    dataset = _dataset(args, settings)
    arguments = checked_arguments(args, model_uri=model_uri, dataset_manifest=dataset)
    from flows.release import release

    outcome = run_flow(release, arguments, args, settings)
    r = outcome.release
    console.print(
        f"{r.model_name} v{r.candidate_version}: {'promoted' if r.promoted else 'not promoted'} "
        f"({r.reason}); champion is v{r.champion_version}"
    )
    return 0


def _latest_model_uri(settings: Settings) -> str:
    from ursa.status import has_mlflow_store

    if has_mlflow_store(settings):
        from tasks.sweep import latest_model_uri
        from tasks.tracking import experiment_id

        try:
            return latest_model_uri(experiment_id(settings), settings.tracking_uri)
        except LookupError:
            pass
    raise UsageError(f"no trained model yet in {settings.tracking_uri}", "Run 'ursa train' first")


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.status import has_mlflow_store

    if not has_mlflow_store(settings):
        raise UsageError(
            f"nothing released yet in {settings.tracking_uri}", "Run 'ursa release' first"
        )
    _serve_target(args, settings)
    arguments = checked_arguments(args)
    from flows.rollback import rollback

    outcome = run_flow(rollback, arguments, args, settings)
    r = outcome.rollback
    served = f"; served v{outcome.deploy.served_version}" if outcome.deploy else ""
    console.print(
        f"{r.model_name}: champion is v{r.champion_version} again "
        f"(v{r.replaced_version or '-'} is now 'previous'){served}"
    )
    return 0


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    _source(args)
    _serve_target(args, settings)
    arguments = checked_arguments(args)
    from flows.pipeline import pipeline

    result = run_flow(pipeline, arguments, args, settings)
    r = result.release.release
    console.print(f"champion: {r.model_name} v{r.champion_version} ({r.reason})")
    if result.clean is not None:
        console.print(f"review the suspect images at {result.clean.review_url}")
    return 0


def cmd_clean(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args) | {"dataset_manifest": _dataset(args, settings)}
    from flows.clean import clean

    result = run_flow(clean, arguments, args, settings)
    from ursa.ranking import read_ranking

    ranked, _ = read_ranking(settings.data_dir)
    for r in ranked[:10]:
        console.print(
            f"#{r.rank:<4} {r.sha256[:12]}  given {r.given:<10} predicted {r.predicted:<10} "
            f"({r.confidence:.0%})  p(given) {r.self_confidence:.3f}  {r.flags}"
        )
    k = result.ranking
    console.print(
        f"Ranked {k.n_images} images ({k.n_confident_issues} confident issues, "
        f"{k.n_label_conflicts} label conflicts) in {k.csv_path}; MLflow run {result.run_id}."
    )
    console.print(f"Review them at {result.review_url} (admin token); the next ingest applies it.")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.server import run
    from ursa.stack import check_port_free

    settings = replace(
        settings,
        serve_host=getattr(args, "host", None) or settings.serve_host,
        serve_port=getattr(args, "port", None) or settings.serve_port,
    )
    if settings.serve_host == "127.0.0.1":
        check_port_free(settings.serve_port, "model server")
    run(settings)
    return 0


def cmd_host(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.embedded import write_embedded_images
    from ursa.imagehost import run_host

    root = getattr(args, "root", None)
    root = Path(root) if root else write_embedded_images(settings.data_dir / "embedded")
    run_host(root, args.host, args.port, args.latency)
    return 0


def project_dir() -> Path:
    """The folder holding prefect.yaml: the source checkout, else the current folder."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "prefect.yaml").exists() else Path.cwd()


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.stack import Ports, Stack

    serve_port = getattr(args, "serve_port", None) or settings.serve_port
    ports = Ports(args.prefect_port, args.mlflow_port, serve_port)
    stack = Stack(settings, project_dir(), ports)
    urls = stack.up()
    for name, url in urls.items():
        console.print(f"{name:12} {url}")
    console.print(
        f"Logs in {settings.data_dir / 'logs'}; admin token in {stack.state_file}. "
        "Ctrl-C (or 'ursa down') stops everything."
    )
    try:
        gone = stack.wait()
        console.print(f"[red]{gone} stopped[/red]; stopping the rest.")
        return 1
    except KeyboardInterrupt:
        console.print("Stopping...")
        return 0
    finally:
        stack.down()


def cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.stack import down_from_state

    stopped = down_from_state(settings.data_dir)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no stack is running here")
    return 0


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show Prefect's and MLflow's INFO logs too (always in <data>/logs/ursa.log)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show full tracebacks (also URSA_DEBUG=1)",
    )


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an option not given is left out of the namespace (SUPPRESS), so
    the flow's own default applies; each command takes -v and --debug too."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(argument_default=argparse.SUPPRESS, **kwargs)
        add_common_options(self)


# The flow behind each command: --help shows its defaults and choices, read from its source.
FLOWS = {
    "ingest": ("flows.ingest", "ingest"),
    "train": ("flows.train", "train"),
    "sgd": ("flows.sgd", "sgd_from_scratch"),
    "release": ("flows.release", "release"),
    "rollback": ("flows.rollback", "rollback"),
    "pipeline": ("flows.pipeline", "pipeline"),
    "clean": ("flows.clean", "clean"),
}


def show_flow_parameters(p: argparse.ArgumentParser, module: str, flow: str) -> None:
    """Add the flow's default to each option's help, and the flow's choices where it has some."""
    from ursa.parameters import flow_parameters

    parameters = flow_parameters(module, flow)
    for action in p._actions:
        parameter = parameters.get(action.dest)
        if parameter is None:
            continue
        if parameter.choices and action.choices is None:
            action.choices = parameter.choices
        if parameter.default and action.nargs != 0:  # flags say what they do
            action.help = f"{action.help or ''} (default {parameter.default})".lstrip()


def option_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """Each destination of ``command``'s parser -> the option that sets it (for messages)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        a.dest: a.option_strings[-1] if a.option_strings else a.dest.upper()
        for a in sub.choices[command]._actions
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.status import print_status, status

    report = status(settings)
    if getattr(args, "json", False):
        import json

        print(json.dumps(report, indent=2))
    else:
        print_status(report, console)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ursa",
        description="Image classifiers from web image URL lists: download, verify, dedup, "
        "train, register and serve. Settings come from the environment (see README).",
    )
    add_common_options(parser)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
    )

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default and query it")
    p.set_defaults(func=cmd_demo)

    def ingest_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "source",
            nargs="?",
            help="folder of <class>.txt URL lists (one URL per line) or of CSVs with a url "
            "column, one such file, a folder of class folders of images, or 'embedded'",
        )
        p.add_argument("--max-per-class", type=int, help="first N URLs per class")
        p.add_argument("--seed", type=int, help="split and training seed")

    p = sub.add_parser("ingest", help="download, verify and dedup URL lists into a dataset")
    ingest_args(p)
    p.add_argument("--valid-pct", type=float, help="validation share")
    p.add_argument("--concurrency", type=int, help="parallel downloads")
    p.add_argument("--per-host", type=int, help="parallel per host")
    p.add_argument(
        "--timeout", dest="timeout_s", metavar="SECONDS", type=float, help="deadline per URL in s"
    )
    p.add_argument("--fresh", action="store_true", help="fetch every URL again instead of resuming")
    p.set_defaults(func=cmd_ingest)

    def sweep_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lr", dest="lrs", type=_floats, help="learning rates, comma-separated")
        p.add_argument("--epochs", type=_ints, help="epoch counts, comma-separated")
        p.add_argument("--arch", choices=["resnet18", "resnet34"])

    p = sub.add_parser("train", help="sweep learning rates x epochs, tracked in MLflow")
    p.add_argument(
        "--dataset",
        dest="dataset_manifest",
        metavar="CSV",
        help="dataset manifest (default: the data folder's last ingest)",
    )
    sweep_args(p)
    p.add_argument("--image-size", type=int, help="training resolution in px")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from pretrained weights (a local file or torchvision's cache)",
    )
    p.add_argument(
        "--weights",
        dest="weights_path",
        metavar="FILE",
        help="local state_dict file for --pretrained",
    )
    p.add_argument(
        "--if-no-weights",
        help="when --pretrained weights are missing: stop with a message (fail) or "
        "train from scratch",
    )
    p.add_argument("--freeze-epochs", type=int, help="head-only epochs (pretrained)")
    p.add_argument(
        "--no-augment", dest="augment", action="store_false", help="turn batch augmentation off"
    )
    p.add_argument("--flip", action="store_true", help="also flip images horizontally")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each trial's model: on a GPU, pays after ~250k training images "
        "per trial",
    )
    p.add_argument(
        "--mode", help="every lr x epochs pair, or successive halving with epochs as the budget"
    )
    p.add_argument("--eta", type=int, help="halving: keep the best 1/eta per rung")
    p.add_argument("--lr-find", action="store_true", help="run the learning-rate finder first")
    p.add_argument(
        "--centre-lrs", action="store_true", help="centre the --lr grid on lr_find's suggestion"
    )
    p.add_argument("--runner", help="trials in threads of this process or on Dask")
    p.add_argument(
        "--workers",
        type=int,
        help="trials at once (threads or Dask); 0: one per core up to the trials, one on a GPU",
    )
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster (--runner dask)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sgd", help="lesson2-sgd: fit a line by hand-written SGD, in MLflow")
    p.add_argument("--lr", dest="lrs", type=_floats, help="learning rates")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_sgd)

    def release_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--margin",
            type=float,
            help="accuracy a candidate must beat the champion by "
            "(default URSA_RELEASE_MARGIN or 0)",
        )
        p.add_argument("--serve-url", help="server to redeploy (default: URSA_SERVE_URL)")

    p = sub.add_parser("release", help="register a model; promote it if it beats the champion")
    p.add_argument("--model-uri", help="model to release (default: the latest sweep's best)")
    p.add_argument(
        "--dataset",
        dest="dataset_manifest",
        metavar="CSV",
        help="dataset manifest to compare on (default: last ingest)",
    )
    release_args(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("rollback", help="make the previous champion the champion again")
    p.add_argument("--serve-url", help="server to redeploy (default: URSA_SERVE_URL)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("pipeline", help="ingest, train and release in one flow run")
    ingest_args(p)
    sweep_args(p)
    release_args(p)
    p.add_argument("--clean", action="store_true", help="rank suspect images after training")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("clean", help="rank the images most likely mislabelled, for review")
    p.add_argument(
        "--dataset",
        dest="dataset_manifest",
        metavar="CSV",
        help="dataset manifest (default: the data folder's last ingest)",
    )
    p.add_argument("--folds", type=int, help="k of the k-fold")
    p.add_argument("--epochs", type=int, help="epochs per fold model")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--arch", choices=["resnet18", "resnet34"])
    p.add_argument("--image-size", type=int, help="training resolution in px")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--review-url",
        dest="review",
        metavar="URL",
        help="review page to link (default: the server's /review)",
    )
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser("serve", help="serve the registered champion over HTTP")
    p.add_argument("--host", help="bind address (default URSA_SERVE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default URSA_SERVE_PORT or 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("host", help="publish images and junk-laden URL lists on 127.0.0.1")
    p.add_argument("--root", help="folder of <class>/<image> files (default: the embedded digits)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--latency", type=float, default=0.0, help="added delay per response, s")
    p.set_defaults(func=cmd_host)

    p = sub.add_parser(
        "up", help="start Prefect, a worker, MLflow and the model server on 127.0.0.1"
    )
    p.add_argument(
        "--prefect-port", type=int, default=int(os.environ.get("URSA_PREFECT_PORT", 4200))
    )
    p.add_argument("--mlflow-port", type=int, default=int(os.environ.get("URSA_MLFLOW_PORT", 5000)))
    p.add_argument("--serve-port", type=int, default=None, help="default URSA_SERVE_PORT or 8000")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the stack that 'ursa up' started")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="where things stand: dataset, sweep, models, servers")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(func=cmd_status)

    for command, (module, flow) in FLOWS.items():
        show_flow_parameters(sub.choices[command], module, flow)
    return parser


# Commands that start or read servers themselves rather than report runs to one.
OWN_SERVERS = {"up", "down", "serve", "host"}


def _debug(args: argparse.Namespace) -> bool:
    return args.debug or os.environ.get("URSA_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run a command; returns the exit status: 2 for what the user can fix (one line on
    stderr: ``ursa: error: <what>. <what to do>``), 1 for a bug (the traceback goes to a file
    in the data folder's logs, or to the console with --debug or URSA_DEBUG=1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.option_names = option_names(parser, args.command)
    logs = Path("ursa-data").resolve() / "logs"
    try:
        from ursa.logs import quiet_env

        quiet_env(args.verbose)
        settings = Settings.from_env()
        logs = settings.data_dir / "logs"
        if args.command not in OWN_SERVERS:
            settings = report_to_running_stack(settings)
        return args.func(args, settings)
    except KeyboardInterrupt:
        print("ursa: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _debug(args):
            raise
        if user_fixable(exc):
            print(f"ursa: error: {one_line(exc)}", file=sys.stderr)
            return 2
        where = write_traceback(exc, logs)
        print(
            f"ursa: internal error: {type(exc).__name__}: {one_line(exc)[:300].rstrip('.')}. "
            f"The full traceback is in {where}; rerun with --debug to see it here.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
