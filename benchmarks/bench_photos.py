"""The lesson's journey on generated photos, stage by stage: what later work is measured against.

    .venv/bin/python benchmarks/bench_photos.py [--per-class 500] [--latency 0.05]
        [--batches 3] [--serve-seconds 10] [--clients 16]

About 1,500 generated bear photos (``standins.photos``: 400-2000 px JPEGs, some PNG, WebP,
greyscale, CMYK, EXIF-rotated; made once and kept in the temporary folder) are served by the
local image host (50 ms added latency, the host's junk included) and made searchable by the
DuckDuckGo stand-in, both in a process of their own. Then each stage runs in a fresh
process, so that its peak memory (ru_maxrss; with its worker processes' largest beside it)
is its own:

1. search: ``tasks.urls.collect_class`` per class through the real ddgs client, paced at
   Ursa's default of one query a second (the ceiling: a page of 100 results a second);
2. download: ``tasks.download.download_urls``, against fastai's ``download_images``
   (8 threads of blocking GETs, as in bench_ingest.py);
3. verify: ``tasks.verify.verify_rows`` (full decode, checks, hashes; one process per core);
4. dedup: ``tasks.dedup.build_dataset`` (exact and near duplicates, the split);
5. decode for training: ``tasks.tensor_cache.tensor_cache`` at the recipe's cache size (256
   px for training at 224), once per dataset, against
   what a torchvision ImageFolder pipeline pays every epoch (PIL decode, random resized
   crop, flip, to tensor, normalise; timed on an even sample of 300 photos);
6. training: the photos recipe (resnet34 at 224 px, batches of 64, photo augmentation), all
   layers training (fine-tuning's second phase, the long one), ``tasks.train.train_one_epoch``
   timed over ``--batches`` mini-batches after one untimed batch;
7. serving at 224 px: Ursa's server against the lesson's naive per-request server
   (bench_serve.py's), each in its own process, uploads of a real photo from the set.

The machine is shared and its speed drifts; the ratios compare runs made in the same
process minutes apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

from standins.photos import QUERIES as CLASSES  # noqa: E402
from tasks.recipes import RECIPES  # noqa: E402

NAIVE_SAMPLE = 300  # images the per-epoch ImageFolder baseline decodes
RECIPE = RECIPES["photos"]  # resnet34 at 224 px, cropped to the square, photo augmentation
IMAGE_SIZE, ARCH, BATCH_SIZE = RECIPE.image_size, RECIPE.arch, RECIPE.batch_size


def _recipe_config():
    """The photos recipe's TrainConfig (resnet34 at 224 px, its cache at 256 px)."""
    from tasks.train import TrainConfig

    return TrainConfig(
        arch=ARCH,
        image_size=IMAGE_SIZE,
        batch_size=BATCH_SIZE,
        augmentation=RECIPE.augmentation,
        flip=RECIPE.flip,
        resize=RECIPE.resize,
        resize_ratio=RECIPE.resize_ratio,
    )


def _peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _process_peak_mib(pid: int) -> float:
    """A running process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- stages, each run in a child process -------------------------------------------------------


def stage_search(work: Path, search_url: str, per_class: int) -> dict:
    from tasks.image_search import SearchOptions, image_search
    from tasks.urls import Pacing, Rules, collect_class, load_collection, pacer_for

    search = image_search("duckduckgo", SearchOptions(base_url=search_url))
    pacer = pacer_for("duckduckgo", Pacing())
    c = load_collection(work / "urls")
    started = time.perf_counter()
    pages = 0
    for label, query in CLASSES.items():
        pages += collect_class(search, pacer, c, label, query, per_class, Rules()).queries
    seconds = time.perf_counter() - started
    return {"items": len(c.records), "seconds": seconds, "pages": pages}


def stage_download(work: Path, data_dir: Path) -> dict:
    from benchmarks.bench_ingest import fastai_like_download
    from tasks.download import DownloadOptions, download_urls
    from tasks.manifest import UrlRow, write_rows
    from tasks.sources import read_source

    rows = read_source(work / "urls", data_dir)
    started = time.perf_counter()
    fetched = download_urls(rows, data_dir, DownloadOptions(timeout_s=5.0), resume=False)
    seconds = time.perf_counter() - started
    write_rows(work / "downloaded.csv", fetched, UrlRow)
    # The baseline on the same URLs; it swallows errors, so it is timed over all of them too.
    started = time.perf_counter()
    fastai_like_download([r.url for r in rows], work / "fastai")
    baseline = time.perf_counter() - started
    ok = sum(1 for r in fetched if r.outcome == "ok")
    return {"items": len(rows), "seconds": seconds, "ok": ok, "baseline_seconds": baseline}


def stage_verify(work: Path, data_dir: Path) -> dict:
    from tasks.manifest import UrlRow, read_rows, write_rows
    from tasks.verify import verify_rows

    rows = read_rows(work / "downloaded.csv", UrlRow)
    files = sum(1 for r in rows if r.outcome == "ok")
    started = time.perf_counter()
    verified = verify_rows(rows, data_dir, workers=None)
    seconds = time.perf_counter() - started
    write_rows(work / "verified.csv", verified, UrlRow)
    return {"items": files, "seconds": seconds}


def stage_dedup(work: Path, data_dir: Path) -> dict:
    from tasks.dedup import build_dataset
    from tasks.manifest import UrlRow, read_rows

    rows = read_rows(work / "verified.csv", UrlRow)
    images = sum(1 for r in rows if r.outcome == "ok")
    started = time.perf_counter()
    dataset = build_dataset(rows, data_dir)
    seconds = time.perf_counter() - started
    (work / "dataset.txt").write_text(str(dataset.manifest_path))
    return {"items": images, "seconds": seconds}


def stage_decode(work: Path, data_dir: Path) -> dict:
    import torch
    from PIL import Image
    from torchvision import transforms

    from tasks.manifest import ImageRow, load_dataset, read_rows
    from tasks.tensor_cache import tensor_cache
    from tasks.train import MEAN, STD

    dataset = load_dataset((work / "dataset.txt").read_text())
    kept = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
    started = time.perf_counter()
    cache = tensor_cache(dataset, _recipe_config().resize_size, RECIPE.resize)
    seconds = time.perf_counter() - started
    (work / "cache.txt").write_text(str(cache))
    # What an ImageFolder + DataLoader pipeline does for every image, every epoch.
    naive = transforms.Compose(
        [
            transforms.RandomResizedCrop(IMAGE_SIZE, scale=(0.5, 1)),  # the lesson's min_scale
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    torch.set_num_threads(1)
    sample = kept[:: max(1, len(kept) // NAIVE_SAMPLE)]  # its rate is what counts
    started = time.perf_counter()
    for r in sample:
        with Image.open(data_dir / r.image_path) as im:
            naive(im.convert("RGB"))
    baseline = time.perf_counter() - started
    return {
        "items": len(kept),
        "seconds": seconds,
        "baseline_items": len(sample),
        "baseline_seconds": baseline,
    }


def stage_train(work: Path, data_dir: Path, batches: int) -> dict:
    import math

    import torch

    from tasks.tensor_cache import Tensors, load_tensors
    from tasks.train import (
        build_model,
        device_for_training,
        memory_format,
        phase_optimizer,
        train_one_epoch,
    )

    data = load_tensors((work / "cache.txt").read_text())
    n = BATCH_SIZE * batches
    repeat = math.ceil((n + BATCH_SIZE) / len(data.y_train))
    x, y = data.x_train.repeat(repeat, 1, 1, 1), data.y_train.repeat(repeat)
    config = _recipe_config()
    device = device_for_training()
    model = build_model(config, len(data.classes)).to(device, memory_format=memory_format(device))
    generator = torch.Generator().manual_seed(0)
    aug = torch.Generator(device=device).manual_seed(0)

    def epoch(images: int) -> float:
        subset = Tensors(data.classes, x[:images], y[:images], data.x_valid, data.y_valid)
        optimizer, rates = phase_optimizer(model, "unfrozen", 1e-3)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=rates, total_steps=batches + 1
        )
        started = time.perf_counter()
        train_one_epoch(model, optimizer, scheduler, subset, config, generator, device, aug)
        return time.perf_counter() - started

    epoch(BATCH_SIZE)  # warm-up: first-use costs (kernels, allocator) are not the steady rate
    seconds = epoch(n)
    return {"items": n, "seconds": seconds, "threads": torch.get_num_threads()}


STAGES = {
    "search": stage_search,
    "download": stage_download,
    "verify": stage_verify,
    "dedup": stage_dedup,
    "decode": stage_decode,
    "train": stage_train,
}


def run_stage(name: str, work: Path, **kwargs) -> dict:
    """Run one stage in a fresh process; its figures and peak memory."""
    out = work / f"{name}.json"
    argv = [sys.executable, __file__, "--stage", name, str(work), json.dumps(kwargs)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"stage {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    print(
        f"{name:>9}: {result['items']} in {result['seconds']:.1f} s, "
        f"peak {result['rss_mib']:.0f} MiB",
        flush=True,
    )
    return result


def _child(name: str, work: Path, kwargs: dict) -> None:
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    os.environ["URSA_DATA_DIR"] = str(data_dir)
    fn = STAGES[name]
    params = {"work": work, **kwargs}
    if "data_dir" in fn.__code__.co_varnames[: fn.__code__.co_argcount]:
        params["data_dir"] = data_dir
    result = fn(**params)
    result["rss_mib"] = _peak_mib()
    result["workers_rss_mib"] = _peak_mib(resource.RUSAGE_CHILDREN)
    (work / f"{name}.json").write_text(json.dumps(result))


# -- the hosts and the servers -----------------------------------------------------------------

_HOSTS = """
import sys
from pathlib import Path
from standins.searchhost import photo_search
hosts = photo_search(Path(sys.argv[1]), latency_s=float(sys.argv[2]), per_query=300)
with hosts as (images, search):
    print(images.base_url, search.base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


def serve(work: Path, seconds: float, clients: int) -> dict:
    """Ursa's server and the naive one on an untrained resnet34 at 224 px; req/s and peaks."""
    import psutil

    from app.demo import free_port, server_process
    from benchmarks.bench_serve import naive_process, register_model, run_load
    from tasks.manifest import ImageRow, load_dataset, read_rows
    from ursa.settings import Settings

    dataset = load_dataset((work / "dataset.txt").read_text())
    kept = [r for r in read_rows(Path(dataset.manifest_path), ImageRow) if r.status == "kept"]
    # A typical upload: the photo of median file size among the JPEGs kept.
    jpegs = sorted(
        (dataset.data_dir / r.image_path for r in kept if r.image_path.endswith(".jpg")),
        key=lambda p: p.stat().st_size,
    )
    body = jpegs[len(jpegs) // 2].read_bytes()
    data_dir = work / "serve"
    data_dir.mkdir()
    settings = register_model(
        data_dir, "photos", IMAGE_SIZE, arch=ARCH, classes=list(CLASSES), resize=RECIPE.resize
    )

    def peak_of_server() -> float:
        me = psutil.Process()
        return max(_process_peak_mib(p.pid) for p in me.children(recursive=True))

    results = {"upload_bytes": len(body)}
    naive = []
    for threads in (1, 2):
        with naive_process(settings, free_port(), threads) as url:
            load = run_load(url, body, clients, seconds)
            naive.append((load.throughput, peak_of_server(), threads, load.failures))
    results["naive"] = max(naive)
    with server_process(Settings(**{**settings.__dict__, "serve_port": free_port()})) as url:
        load = run_load(url, body, clients, seconds)
        results["ursa"] = (load.throughput, peak_of_server(), 0, load.failures)
    return results


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        _child(sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=500, help="photos per class (3 classes)")
    parser.add_argument("--latency", type=float, default=0.05, help="image host latency, s")
    parser.add_argument(
        "--batches", type=int, default=2, help=f"timed training mini-batches of {BATCH_SIZE}"
    )
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    from standins.photos import write_photos

    tmp = Path(tempfile.gettempdir())
    started = time.perf_counter()
    photos = write_photos(tmp / f"ursa-bench-photos-{args.per_class}", args.per_class)
    made = time.perf_counter() - started
    files = [p for p in photos.rglob("*") if p.is_file() and not p.name.startswith(".")]
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    print(
        f"cores: {os.cpu_count()}; {len(files)} photos, {megabytes:.0f} MB "
        f"(made or found in {made:.0f} s); image host latency {args.latency * 1000:g} ms",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="ursa-bench-photos-"))
    hosts = subprocess.Popen(
        [sys.executable, "-c", _HOSTS, str(photos), str(args.latency)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        _, search_url = hosts.stdout.readline().split()
        r = {"search": run_stage("search", work, search_url=search_url, per_class=args.per_class)}
        for name in ("download", "verify", "dedup", "decode"):
            r[name] = run_stage(name, work)
        r["train"] = run_stage("train", work, batches=args.batches)
        hosts_peak = _process_peak_mib(hosts.pid)
    finally:
        hosts.stdin.close()
        hosts.wait(timeout=30)
    serving = serve(work, args.serve_seconds, args.clients)
    report(r, serving, hosts_peak, args)


def report(r: dict, serving: dict, hosts_peak: float, args: argparse.Namespace) -> None:
    def rate(s: dict) -> float:
        return s["items"] / s["seconds"]

    rows = [
        ("search", "URLs", r["search"], "", ""),
        ("download", "URLs", r["download"], "fastai download_images", "baseline_seconds"),
        ("verify", "files", r["verify"], "", ""),
        ("dedup", "images", r["dedup"], "", ""),
        (
            "decode for training",
            "images",
            r["decode"],
            "ImageFolder, per epoch",
            "baseline_seconds",
        ),
        (f"train {ARCH} {IMAGE_SIZE} px", "images", r["train"], "", ""),
    ]
    print()
    print(
        "| stage | items | s | items/s | baseline items/s | vs baseline | peak RSS MiB (workers) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, unit, s, base_name, key in rows:
        base = s.get("baseline_items", s["items"]) / s[key] if key else None
        vs = f"{rate(s) / base:.1f}x ({base_name})" if base else "-"
        workers = f" ({s['workers_rss_mib']:.0f})" if s["workers_rss_mib"] > 1 else ""
        print(
            f"| {name} | {s['items']} {unit} | {s['seconds']:.1f} | {rate(s):.1f} "
            f"| {f'{base:.1f}' if base else '-'} | {vs} | {s['rss_mib']:.0f}{workers} |"
        )
    naive, ursa = serving["naive"], serving["ursa"]
    print(
        f"| serve {ARCH} {IMAGE_SIZE} px | {args.clients} clients, {args.serve_seconds:g} s "
        f"| - | {ursa[0]:.1f} req/s | {naive[0]:.1f} (naive, {naive[2]} thread(s)) "
        f"| {ursa[0] / naive[0]:.2f}x | {ursa[1]:.0f} (naive {naive[1]:.0f}) |"
    )
    print(
        f"\nsearch: {r['search']['pages']} pages at one query a second at most; "
        f"download: {r['download']['ok']} of {r['download']['items']} URLs ok; "
        f"image host + search stand-in peak {hosts_peak:.0f} MiB; upload "
        f"{serving['upload_bytes'] / 1000:.0f} kB; training on {r['train']['threads']} torch "
        f"threads; failed requests: naive {naive[3]}, ursa {ursa[3]}"
    )
    timed = {name: s["seconds"] for name, _, s, _, _ in rows if not name.startswith("train")}
    slowest = max(timed, key=timed.get)
    epoch = r["dedup"]["items"] * 0.8 / rate(r["train"])  # training images per epoch
    print()
    print(f"slowest stage before training: {slowest}, {timed[slowest]:.1f} s (no goal)")
    print(
        f"training, one epoch of this dataset (80% of {r['dedup']['items']} images) at the "
        f"measured rate: {epoch:.0f} s (no goal)"
    )
    speedup = ursa[0] / naive[0]
    print(f"serve throughput vs naive, {ARCH} {IMAGE_SIZE}px photos: {speedup:.2f}x (no goal)")


if __name__ == "__main__":
    main()
