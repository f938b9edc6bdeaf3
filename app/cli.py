"""The ``ursa`` command: one subcommand per stage, each a thin front on a flow or the server.

Options a user does not give are not passed on (``argparse.SUPPRESS``), so the flows' own
defaults apply; ``--help`` shows them, read from the flows (:mod:`app.parameters`), and the
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

from app.errors import UsageError, one_line, user_fixable, write_traceback  # noqa: E402
from tasks.recipes import AUGMENTATIONS, RECIPES  # noqa: E402
from ursa.images import RESIZE_POLICIES  # noqa: E402
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
    return str(settings.layout.dataset_manifest())


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
    from app.parameters import check_arguments, flow_parameters

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
    from app.logs import route_logs

    log_file = settings.layout.logs / "ursa.log"
    route_logs(log_file, args.verbose, _debug(args))
    return log_file


def reporting_to(settings: Settings) -> str:
    from app.stack import running_stack

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
    from app.stack import running_stack

    stack = running_stack(settings.data_dir)
    if stack is None:
        return settings
    for key, value in stack.get("client_env", {}).items():
        if value and not os.environ.get(key):  # set and empty reads as unset, as in Settings
            os.environ[key] = value
    return Settings.from_env()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import flows.pipeline  # noqa: F401  (Prefect and MLflow set up their loggers on import)
    from app.demo import run_demo

    quiet_logs(args, settings)
    run_demo(settings, console)
    return 0


def _class_queries(pairs: list[str]) -> dict[str, str]:
    """``grizzly="grizzly bear"`` -> {"grizzly": "grizzly bear"}; a bare term names itself."""
    classes = {}
    for pair in pairs:
        label, sep, query = pair.partition("=")
        label, query = label.strip(), (query if sep else label).strip()
        if not label or not query or "/" in label:
            raise UsageError(
                f"expected CLASS=\"search terms\", got '{pair}'",
                'Name each class and its query, e.g. grizzly="grizzly bear"',
            )
        classes[label] = query
    return classes


def cmd_urls(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args, classes=_class_queries(args.classes))
    from flows.urls import collect_urls

    result = run_flow(collect_urls, arguments, args, settings)
    for r in result.reports:
        console.print(
            f"{r.label:<16} {r.collected:>5} of {r.target:<5} {r.status:<6} "
            f"(new {r.new}, duplicates {r.duplicates}, stock/blocked {r.blocked}, "
            f"too small {r.too_small}, in two classes {len(r.conflicts)}; {r.queries} queries)"
        )
    console.print(f"Lists in {result.out}/<class>.txt, details in {result.csv}.")
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


def _arch(name: str) -> str:
    from tasks.architectures import check_arch

    try:
        return check_arch(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args) | {"dataset_manifest": _dataset(args, settings)}
    from flows.train import train
    from tasks.leaderboard import leaderboard
    from tasks.recipes import DEFAULT_RECIPE, RECIPES, recipe_values

    given = {k: arguments.get(k) for k in RECIPES[DEFAULT_RECIPE].__dataclass_fields__}
    values, _ = recipe_values(arguments.get("recipe", DEFAULT_RECIPE), given)
    if values["pretrained"] and arguments.get("if_no_weights") != "scratch":
        from tasks.weights import pretrained_weights_file

        # Missing weights: say so (or download them) before any flow starts.
        pretrained_weights_file(
            values["arch"], arguments.get("weights_path", ""), settings.weights_mirror
        )
    result = run_flow(train, arguments, args, settings)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    for t in leaderboard(result.trials):
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
    from app.status import has_mlflow_store

    if has_mlflow_store(settings):
        from tasks.sweep import latest_model_uri
        from tasks.tracking import experiment_id

        try:
            return latest_model_uri(experiment_id(settings), settings.tracking_uri)
        except LookupError:
            pass
    raise UsageError(f"no trained model yet in {settings.tracking_uri}", "Run 'ursa train' first")


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from app.status import has_mlflow_store

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


def cmd_monitor(args: argparse.Namespace, settings: Settings) -> int:
    arguments = checked_arguments(args)
    from flows.monitor import monitor

    result = run_flow(monitor, arguments, args, settings)
    console.print(
        f"{result.verdict}: {result.n_window} answers from {result.window_start} to "
        f"{result.window_end}; {result.accepted_waiting} accepted feedback images waiting"
    )
    for reason in result.reasons:
        console.print(f"  {reason}")
    if result.pipeline_run_id:
        console.print(
            f"Started the pipeline (flow run {result.pipeline_run_id}): {result.retrain_reason}"
        )
    console.print(f"Report: MLflow run {result.mlflow_run_id}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.stack import check_port_free
    from serving.server import run

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
    from standins.imagehost import run_host
    from ursa.embedded import write_embedded_images

    if getattr(args, "photos", 0):
        from standins.photos import write_photos
        from standins.searchhost import run_photo_hosts

        photos = write_photos(settings.layout.photos, args.photos)
        run_photo_hosts(photos, args.host, args.port, args.latency)
        return 0
    root = getattr(args, "root", None)
    root = Path(root) if root else write_embedded_images(settings.layout.embedded)
    run_host(root, args.host, args.port, args.latency)
    return 0


def project_dir() -> Path:
    """The folder holding prefect.yaml: the source checkout, else the current folder."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "prefect.yaml").exists() else Path.cwd()


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from app.stack import Ports, Stack

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
    from app.stack import down_from_state

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
    "monitor": ("flows.monitor", "monitor"),
    "urls": ("flows.urls", "collect_urls"),
}


def show_flow_parameters(p: argparse.ArgumentParser, module: str, flow: str) -> None:
    """Add the flow's default to each option's help, and the flow's choices where it has some."""
    from app.parameters import flow_parameters

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
    from app.status import print_status, status

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

    p = sub.add_parser("urls", help="search images per class: the URL lists that ingest reads")
    p.add_argument("classes", nargs="+", metavar='CLASS="search terms"')
    p.add_argument("--max", dest="max_per_class", type=int, help="URLs per class")
    p.add_argument("--out", help="folder for <class>.txt and urls.csv")
    p.add_argument("--min-width", type=int, help="smallest reported width, px")
    p.add_argument("--min-height", type=int, help="smallest reported height, px")
    p.add_argument(
        "--block",
        dest="block_domains",
        type=lambda t: [d for d in t.split(",") if d],
        help="more domains to leave out, comma-separated",
    )
    p.add_argument(
        "--allow-stock",
        dest="block_stock_sites",
        action="store_false",
        help="keep stock-photo sites (left out by default)",
    )
    p.add_argument(
        "--keep-conflicts",
        action="store_true",
        help="keep a URL found under two classes in both (default: neither)",
    )
    p.add_argument("--region")
    p.add_argument("--safesearch", choices=["on", "moderate", "off"])
    p.add_argument(
        "--type", dest="type_image", choices=["photo", "clipart", "gif", "transparent", "line"]
    )
    p.add_argument("--proxy", help="http/https/socks5 proxy URL (default DDGS_PROXY)")
    p.set_defaults(func=cmd_urls)

    def ingest_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "source",
            nargs="?",
            help="folder of <class>.txt URL lists (one URL per line) or of CSVs with a url "
            "column, one such file, a folder of class folders of images, or 'embedded'",
        )
        p.add_argument("--max-per-class", type=int, help="first N URLs per class")
        p.add_argument("--seed", type=int, help="split and training seed")
        p.add_argument(
            "--shards",
            type=int,
            help="split the ingest into N shard flow runs on the Prefect workers",
        )

    p = sub.add_parser("ingest", help="download, verify and dedup URL lists into a dataset")
    ingest_args(p)
    p.add_argument("--valid-pct", type=float, help="validation share")
    p.add_argument("--concurrency", type=int, help="parallel downloads")
    p.add_argument("--per-host", type=int, help="parallel per host")
    p.add_argument(
        "--timeout", dest="timeout_s", metavar="SECONDS", type=float, help="deadline per URL in s"
    )
    p.add_argument("--fresh", action="store_true", help="fetch every URL again instead of resuming")
    p.add_argument(
        "--feedback-to-valid",
        action="store_true",
        help="split accepted feedback images like the others (default: all to training, so "
        "the gate compares on the same validation data)",
    )
    p.set_defaults(func=cmd_ingest)

    def arch_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--arch",
            type=_arch,
            metavar="NAME",
            help="any torchvision classification model: resnet18 (digits), resnet34 "
            "(photos), resnet50, convnext_tiny, efficientnet_b0, mobilenet_v3_large, ...",
        )

    def dataset_arg(p: argparse.ArgumentParser, help: str) -> None:
        p.add_argument("--dataset", dest="dataset_manifest", metavar="CSV", help=help)

    # What train and clean share: the dataset, and how its images become model input.
    def dataset_args(p: argparse.ArgumentParser) -> None:
        dataset_arg(p, "dataset manifest (default: the data folder's last ingest)")
        p.add_argument("--image-size", type=int, help="training resolution in px")
        p.add_argument(
            "--resize",
            choices=RESIZE_POLICIES,
            help="how pictures become squares: squash (digits), crop (photos) or pad",
        )
        p.add_argument("--seed", type=int)

    # Options a recipe chooses default to None: not given, the recipe's value applies.
    def sweep_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--recipe",
            choices=tuple(RECIPES),
            help="defaults for the training options: digits (small scans, resnet18 at 32 px "
            "from scratch) or photos (lesson 2: resnet34 pretrained at 224 px, lr from "
            "lr_find, photo augmentation, cropped to the square)",
        )
        p.add_argument("--lr", dest="lrs", type=_floats, help="learning rates, comma-separated")
        p.add_argument("--epochs", type=_ints, help="epoch counts, comma-separated")
        arch_arg(p)
        p.add_argument(
            "--pretrained",
            action=argparse.BooleanOptionalAction,
            help="start from pretrained ImageNet weights: a local file, torchvision's cache, "
            "or downloaded into it (photos: yes)",
        )

    p = sub.add_parser("train", help="sweep learning rates x epochs, tracked in MLflow")
    dataset_args(p)
    sweep_args(p)
    p.add_argument("--batch-size", type=int)
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
        "--augment", action=argparse.BooleanOptionalAction, help="augment training batches"
    )
    p.add_argument(
        "--augmentation", choices=AUGMENTATIONS, help="augmentation style (the recipe's name)"
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        help="also flip images horizontally (photos: yes)",
    )
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
    p.add_argument(
        "--lr-find",
        action=argparse.BooleanOptionalAction,
        help="run the learning-rate finder first (photos: yes)",
    )
    p.add_argument(
        "--centre-lrs",
        action=argparse.BooleanOptionalAction,
        help="centre the --lr grid on lr_find's suggestion (photos: yes)",
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
    dataset_arg(p, "dataset manifest to compare on (default: last ingest)")
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
    dataset_args(p)
    p.add_argument("--folds", type=int, help="k of the k-fold")
    p.add_argument("--epochs", type=int, help="epochs per fold model")
    p.add_argument("--lr", type=float, help="learning rate")
    arch_arg(p)
    p.add_argument(
        "--review-url",
        dest="review",
        metavar="URL",
        help="review page to link (default: the server's /review)",
    )
    p.set_defaults(func=cmd_clean)

    p = sub.add_parser(
        "monitor", help="compare recent predictions with the champion's data: drift verdict"
    )
    p.add_argument("--window-hours", type=float, help="how far back the prediction log is read")
    dataset_arg(p, "the champion's dataset (default: the data folder's last ingest)")
    p.add_argument("--min-predictions", type=int, help="fewer answers give no verdict")
    p.add_argument(
        "--min-accepted-feedback", type=int, help="accepted feedback images that start a retrain"
    )
    p.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="report only: never start the pipeline deployment",
    )
    p.add_argument("--deployment", help="the deployment to start on drift, as flow/deployment")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("serve", help="serve the registered champion over HTTP")
    p.add_argument("--host", help="bind address (default URSA_SERVE_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default URSA_SERVE_PORT or 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("host", help="publish images and junk-laden URL lists on 127.0.0.1")
    p.add_argument("--root", help="folder of <class>/<image> files (default: the embedded digits)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--latency", type=float, default=0.0, help="added delay per response, s")
    p.add_argument(
        "--photos",
        type=int,
        default=0,
        metavar="N",
        help="serve N generated bear photos per class instead, and an image search over them "
        "on port+1 (for `ursa urls` with URSA_SEARCH_URL)",
    )
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
        from app.logs import quiet_env

        quiet_env(args.verbose)
        settings = Settings.from_env()
        logs = settings.layout.logs
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
