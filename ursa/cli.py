"""The ``ursa`` command: one subcommand per stage, each a thin front on a flow or the server."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ursa.offline import set_offline_defaults  # noqa: E402

set_offline_defaults()  # before Prefect and MLflow are imported

from rich.console import Console  # noqa: E402

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


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.demo import run_demo

    run_demo(settings, console)
    return 0


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from flows.ingest import ingest

    result = ingest(
        source=args.source,
        max_per_class=args.max_per_class,
        valid_pct=args.valid_pct,
        seed=args.seed,
        concurrency=args.concurrency,
        per_host=args.per_host,
        timeout_s=args.timeout,
        fresh=args.fresh,
        shards=args.shards,
    )
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
    from flows.train import train
    from tasks.train import WeightsUnavailable

    try:
        result = train(
            dataset_manifest=args.dataset or _default_dataset(settings),
            lrs=args.lr,
            epochs=args.epochs,
            arch=args.arch,
            image_size=args.image_size,
            batch_size=args.batch_size,
            seed=args.seed,
            pretrained=args.pretrained,
            weights_path=args.weights or "",
            if_no_weights=args.if_no_weights,
            freeze_epochs=args.freeze_epochs,
            augment=not args.no_augment,
            flip=args.flip,
            compile=args.compile,
            mode=args.mode,
            eta=args.eta,
            lr_find=args.lr_find,
            centre_lrs=args.centre_lrs,
            runner=args.runner,
            workers=args.workers,
            dask_address=args.dask_address or "",
        )
    except WeightsUnavailable as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
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
    from flows.sgd import sgd_from_scratch

    sgd_from_scratch(lrs=args.lr, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    return 0


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    from flows.release import release

    model_uri = args.model_uri
    if not model_uri:
        from tasks.sweep import latest_model_uri
        from tasks.tracking import experiment_id

        model_uri = latest_model_uri(experiment_id(settings))
    outcome = release(
        model_uri=model_uri,
        dataset_manifest=args.dataset or _default_dataset(settings),
        margin=_margin(args, settings),
        serve_url=args.serve_url or "",
    )
    r = outcome.release
    console.print(
        f"{r.model_name} v{r.candidate_version}: {'promoted' if r.promoted else 'not promoted'} "
        f"({r.reason}); champion is v{r.champion_version}"
    )
    return 0


def _margin(args: argparse.Namespace, settings: Settings) -> float:
    return settings.release_margin if args.margin is None else args.margin


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from flows.rollback import rollback

    outcome = rollback(serve_url=args.serve_url or "")
    r = outcome.rollback
    served = f"; served v{outcome.deploy.served_version}" if outcome.deploy else ""
    console.print(
        f"{r.model_name}: champion is v{r.champion_version} again "
        f"(v{r.replaced_version or '-'} is now 'previous'){served}"
    )
    return 0


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    from flows.pipeline import pipeline

    result = pipeline(
        source=args.source,
        max_per_class=args.max_per_class,
        lrs=args.lr,
        epochs=args.epochs,
        arch=args.arch,
        seed=args.seed,
        margin=_margin(args, settings),
        serve_url=args.serve_url or "",
        clean=args.clean,
        shards=args.shards,
    )
    r = result.release.release
    console.print(f"champion: {r.model_name} v{r.champion_version} ({r.reason})")
    if result.clean is not None:
        console.print(f"review the suspect images at {result.clean.review_url}")
    return 0


def cmd_clean(args: argparse.Namespace, settings: Settings) -> int:
    from flows.clean import clean

    result = clean(
        dataset_manifest=args.dataset or _default_dataset(settings),
        folds=args.folds,
        epochs=args.epochs,
        lr=args.lr,
        arch=args.arch,
        image_size=args.image_size,
        seed=args.seed,
        review=args.review_url or "",
    )
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

    run(
        replace(
            settings,
            serve_host=args.host or settings.serve_host,
            serve_port=args.port or settings.serve_port,
        )
    )
    return 0


def cmd_host(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.embedded import write_embedded_images
    from ursa.imagehost import run_host

    root = Path(args.root) if args.root else write_embedded_images(settings.data_dir / "embedded")
    run_host(root, args.host, args.port, args.latency)
    return 0


def project_dir() -> Path:
    """The folder holding prefect.yaml: the source checkout, else the current folder."""
    checkout = Path(__file__).resolve().parents[1]
    return checkout if (checkout / "prefect.yaml").exists() else Path.cwd()


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ursa.stack import Ports, Stack

    ports = Ports(args.prefect_port, args.mlflow_port, args.serve_port or settings.serve_port)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ursa",
        description="Image classifiers from web image URL lists: download, verify, dedup, "
        "train, register and serve. Settings come from the environment (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded default and query it")
    p.set_defaults(func=cmd_demo)

    def ingest_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "source",
            nargs="?",
            default="embedded",
            help="folder of <class>.txt URL lists (one URL per line) or of CSVs with a url "
            "column, one such file, a folder of class folders of images, or 'embedded' (default)",
        )
        p.add_argument("--max-per-class", type=int, default=None, help="first N URLs per class")
        p.add_argument("--seed", type=int, default=0, help="split and training seed")
        p.add_argument(
            "--shards",
            type=int,
            default=1,
            help="split the ingest into N shard flow runs on the Prefect workers (default 1)",
        )

    p = sub.add_parser("ingest", help="download, verify and dedup URL lists into a dataset")
    ingest_args(p)
    p.add_argument("--valid-pct", type=float, default=0.2, help="validation share (default 0.2)")
    p.add_argument("--concurrency", type=int, default=32, help="parallel downloads (default 32)")
    p.add_argument("--per-host", type=int, default=16, help="parallel per host (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="deadline per URL in s (default 10)")
    p.add_argument("--fresh", action="store_true", help="fetch every URL again instead of resuming")
    p.set_defaults(func=cmd_ingest)

    def sweep_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--lr",
            type=_floats,
            default=[1e-3, 3e-3],
            help="learning rates, comma-separated (default 1e-3,3e-3)",
        )
        p.add_argument(
            "--epochs",
            type=_ints,
            default=[2, 4],
            help="epoch counts, comma-separated (default 2,4)",
        )
        p.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")

    p = sub.add_parser("train", help="sweep learning rates x epochs, tracked in MLflow")
    p.add_argument("--dataset", help="dataset manifest (default: the data folder's last ingest)")
    sweep_args(p)
    p.add_argument("--image-size", type=int, default=32, help="training resolution in px")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="start from pretrained weights (a local file or torchvision's cache)",
    )
    p.add_argument("--weights", help="local state_dict file for --pretrained")
    p.add_argument(
        "--if-no-weights",
        choices=["fail", "scratch"],
        default="fail",
        help="when --pretrained weights are missing: stop with a message (default) or "
        "train from scratch",
    )
    p.add_argument("--freeze-epochs", type=int, default=1, help="head-only epochs (pretrained)")
    p.add_argument("--no-augment", action="store_true", help="turn batch augmentation off")
    p.add_argument("--flip", action="store_true", help="also flip images horizontally")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each trial's model: on a GPU, pays after ~250k training images "
        "per trial",
    )
    p.add_argument(
        "--mode",
        choices=["grid", "halving"],
        default="grid",
        help="every lr x epochs pair, or successive halving with epochs as the budget",
    )
    p.add_argument("--eta", type=int, default=3, help="halving: keep the best 1/eta per rung")
    p.add_argument("--lr-find", action="store_true", help="run the learning-rate finder first")
    p.add_argument(
        "--centre-lrs", action="store_true", help="centre the --lr grid on lr_find's suggestion"
    )
    p.add_argument("--runner", choices=["threads", "dask"], default="threads")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="trials at once (threads or Dask); 0: one per core up to the trials, one on a GPU",
    )
    p.add_argument("--dask-address", help="scheduler of an existing Dask cluster (--runner dask)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sgd", help="lesson2-sgd: fit a line by hand-written SGD, in MLflow")
    p.add_argument("--lr", type=_floats, default=[0.01, 0.1, 1.1], help="learning rates")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sgd)

    def release_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--margin",
            type=float,
            default=None,
            help="accuracy a candidate must beat the champion by "
            "(default URSA_RELEASE_MARGIN or 0)",
        )
        p.add_argument("--serve-url", help="server to redeploy (default: URSA_SERVE_URL)")

    p = sub.add_parser("release", help="register a model; promote it if it beats the champion")
    p.add_argument("--model-uri", help="model to release (default: the latest sweep's best)")
    p.add_argument("--dataset", help="dataset manifest to compare on (default: last ingest)")
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
    p.add_argument("--dataset", help="dataset manifest (default: the data folder's last ingest)")
    p.add_argument("--folds", type=int, default=4, help="k of the k-fold (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per fold model (default 3)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    p.add_argument("--image-size", type=int, default=32, help="training resolution in px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--review-url", help="review page to link (default: the server's /review)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return args.func(args, settings)


if __name__ == "__main__":
    sys.exit(main())
