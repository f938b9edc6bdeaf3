"""Serving throughput: Ursa's batched server against the lesson's naive server, over HTTP.

For each model (resnet18 at 64 px, the issue's yardstick, and the default resnet18 at 32 px;
untrained weights, 10 classes, registered in a throw-away MLflow store):

1. the in-process ceiling: the model's own images/s at its best batch size and thread count
   (forward pass on a ready tensor batch, no HTTP, no decoding): a one-second sweep picks
   the configuration, and each round times it again for 3 s right before Ursa's run;
2. a naive server written the way the lesson's app was: a Starlette route that decodes the
   upload and runs the model on it inside the request (``async def`` calling the model);
3. Ursa's server (``ursa serve``: dynamic batching, inference thread, limits, metrics);

each server in its own process, and the load generator (32 concurrent closed-loop clients,
keep-alive, raw PNG bodies at the model's input size; a minimal HTTP/1.1 client on uvloop,
so that it takes little of the shared cores) in this one, so the client never holds
the server's GIL. Both servers and the client share the machine's cores, whose speed drifts,
so the whole comparison runs ``--rounds`` times and the goals are read on the medians.

With ``--part burst`` (or ``all``, the default, which runs it first): overload. An open burst
of ``--burst`` requests, at most ``--in-flight`` at a time, against ``ursa serve`` with its
defaults (bounded queue, deadline) and, in the same round, without a bound or a deadline
(``URSA_MAX_QUEUE=0 URSA_REQUEST_TIMEOUT_S=0``): answered and shed shares, latency of the
answered requests, the slowest ``/healthz``/``/readyz`` probe from a process of its own,
the server's RSS growth and its event-loop lag.

    .venv/bin/python benchmarks/bench_serve.py [--seconds 15] [--clients 32] [--rounds 3]
    .venv/bin/python benchmarks/bench_serve.py --part burst [--burst 3000] [--in-flight 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import httpx  # noqa: E402

from app.demo import free_port, server_process  # noqa: E402
from ursa.settings import Settings  # noqa: E402

CLASSES = [f"class{i}" for i in range(10)]
BATCH_SIZES = (1, 4, 8, 16, 32, 64)


@dataclass
class Load:
    requests: int
    failures: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


# -- the model --------------------------------------------------------------------------


def register_model(
    data_dir: Path,
    name: str,
    image_size: int,
    arch: str = "resnet18",
    classes: list | None = None,
    resize: str = "squash",
) -> Settings:
    """An untrained ``arch`` at ``image_size``, logged as an Ursa package and crowned."""
    import mlflow
    import torchvision
    from mlflow import MlflowClient

    from ursa.package import log_package

    settings = Settings(
        data_dir=data_dir,
        tracking_uri=f"sqlite:///{data_dir / 'mlflow.db'}",
        model_name=name,
        poll_interval_s=0,
    )
    mlflow.set_tracking_uri(settings.tracking_uri)
    experiment = mlflow.create_experiment(name, artifact_location=settings.artifact_location)
    with mlflow.start_run(experiment_id=experiment):
        classes = classes or CLASSES
        model = torchvision.models.get_model(arch, num_classes=len(classes))
        meta = {
            "arch": arch,
            "classes": classes,
            "image_size": image_size,
            "resize": resize,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
        uri = log_package(model, meta)
    version = mlflow.register_model(uri, name).version
    MlflowClient(settings.tracking_uri).set_registered_model_alias(name, "champion", version)
    return settings


def forward_rates(package) -> dict[tuple[int, int], float]:
    """Images/s of the bare forward pass on a ready tensor batch, per (batch size, threads)."""
    import torch

    return {
        (batch, threads): forward_rate(package, batch, threads, seconds=1.0)
        for threads in sorted({1, torch.get_num_threads()})
        for batch in BATCH_SIZES
    }


def forward_rate(package, batch: int, threads: int, seconds: float) -> float:
    """Images/s of ``package``'s model at one batch size and thread count, after a warm-up."""
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    size = package.meta["image_size"]
    x = torch.randn(batch, 3, size, size)
    try:
        with torch.inference_mode():
            package.module(x)
            n, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                package.module(x)
                n += batch
            return n / (time.perf_counter() - started)
    finally:
        torch.set_num_threads(default_threads)


def upload(image_size: int) -> bytes:
    """A photo-like PNG (smooth gradient plus noise) at the model's input size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, image_size)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1)
    pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


# -- the naive server, the way the lesson wrote it --------------------------------------


def naive_app(settings: Settings, threads: int):
    import torch
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from ursa.images import open_image
    from ursa.package import load_package

    torch.set_num_threads(threads)
    package = load_package(settings.champion_uri, settings.tracking_uri)

    async def predict(request):
        image = open_image(await request.body())
        row = package.probabilities([image])[0]  # the model runs inside the request
        best = row.argsort()[::-1][:3]
        return JSONResponse(
            {
                "predictions": [
                    {"label": package.classes[i], "probability": float(row[i])} for i in best
                ]
            }
        )

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/predict", predict, methods=["POST"]), Route("/healthz", healthz)]
    )


@contextmanager
def naive_process(settings: Settings, port: int, threads: int):
    log = open(settings.data_dir / "naive.log", "ab")  # noqa: SIM115 - closed below
    env = {**os.environ, "URSA_DATA_DIR": str(settings.data_dir)}
    command = [
        sys.executable,
        __file__,
        "--naive-server",
        str(settings.data_dir),
        settings.model_name,
    ]
    proc = subprocess.Popen(
        [*command, str(port), str(threads)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"The naive server exited; see {settings.data_dir / 'naive.log'}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("The naive server did not come up")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def serve_naive(data_dir: str, name: str, port: int, threads: int) -> None:
    import uvicorn

    settings = Settings(
        data_dir=Path(data_dir),
        tracking_uri=f"sqlite:///{Path(data_dir) / 'mlflow.db'}",
        model_name=name,
    )
    uvicorn.run(naive_app(settings, threads), host="127.0.0.1", port=port, log_level="warning")


# -- the load generator -----------------------------------------------------------------


async def generate_load(url: str, body: bytes, clients: int, seconds: float, warmup: float) -> Load:
    """``clients`` closed-loop clients, each on its own keep-alive connection, for ``seconds``.

    A minimal HTTP/1.1 client on asyncio streams rather than aiohttp: the load generator
    shares the cores with the server, and aiohttp spent about 0.3 ms of CPU per request.
    """
    parsed = urllib.parse.urlsplit(url)
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_reply(reader), 60)
                done = time.perf_counter()
                # Every answer that lands inside the window counts, however long it took.
                if measure_from <= done <= stop_at:
                    counts["ok" if status == 200 else "failed"] += 1
                    latencies.append(done - sent)
                if not keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return Load(counts["ok"], counts["failed"], seconds, latencies)


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; return its status and whether the connection stays open."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if line)
    if "content-length" not in headers:
        raise RuntimeError(f"Reply without Content-Length: {head[0]}")
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection") != "close"


def run_load(url: str, body: bytes, clients: int, seconds: float) -> Load:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(generate_load(url, body, clients, seconds, warmup=3.0))


# -- an open burst: overload ------------------------------------------------------------


@dataclass
class Burst:
    statuses: dict[int, int]  # answers per HTTP status
    answered: list[float]  # latencies of the 200s
    dropped: int  # requests whose connection failed or timed out without an answer
    seconds: float
    probes: list[float]  # /healthz and /readyz latencies during the burst, on the port an
    # orchestrator would probe: the health port when the server has one, else the main port
    probe_failures: int  # those probes without an answer within PROBE_TIMEOUT_S
    main_probes: list[float]  # the same probes on the main port (the request loop)
    rss_before: int  # bytes, the server's resident memory before the burst
    rss_peak: int  # bytes, the most sampled during it
    loop_lag: float  # seconds: the server's slowest event-loop wake (its histogram's bucket)

    @property
    def shed_share(self) -> float:
        return self.statuses.get(503, 0) / max(1, sum(self.statuses.values()) + self.dropped)

    @property
    def p99_answered(self) -> float:
        return percentile(self.answered, 99)

    @property
    def slowest_probe(self) -> float:
        return max(self.probes, default=float("inf"))


PROBE_TIMEOUT_S = 30.0
PROBE_EVERY_S = 0.02


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def generate_burst(url: str, body: bytes, total: int, in_flight: int) -> tuple:
    """``total`` requests, at most ``in_flight`` at a time, each slot on a keep-alive connection.

    All slots open and send at once: the server sees ``in_flight`` requests arrive together
    and, as each is answered or refused, the next one from the same slot.
    """
    parsed = urllib.parse.urlsplit(url)
    request = (
        f"POST /predict HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    statuses: dict[int, int] = {}
    answered: list[float] = []
    left = total
    dropped = 0

    async def slot() -> None:
        nonlocal left, dropped
        reader = writer = None
        while left > 0:
            left -= 1
            sent = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
                writer.write(request)
                status, keep_alive = await asyncio.wait_for(read_reply(reader), 60)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                dropped += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                answered.append(time.perf_counter() - sent)
            if not keep_alive:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(in_flight)))
    return statuses, answered, dropped, time.perf_counter() - started


def probe(url: str, pid: int, out: str) -> None:
    """Until killed: GET /healthz and /readyz in turn on fresh connections, like an
    orchestrator's probes, and sample the server's RSS; one line per probe into ``out``.

    Runs in its own process, so that the load generator's event loop delays no probe.
    """
    import http.client

    parsed = urllib.parse.urlsplit(url)
    status = Path(f"/proc/{pid}/status")
    with open(out, "w", buffering=1) as log:
        for n in itertools.count():
            path = "/healthz" if n % 2 == 0 else "/readyz"
            started = time.perf_counter()
            try:
                conn = http.client.HTTPConnection(
                    parsed.hostname, parsed.port, timeout=PROBE_TIMEOUT_S
                )
                conn.request("GET", path)
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            took = time.perf_counter() - started
            rss = next(
                int(line.split()[1]) * 1024
                for line in status.read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            log.write(f"{path} {int(ok)} {took:.6f} {rss}\n")
            time.sleep(PROBE_EVERY_S)


def server_pid(port: int) -> int:
    """The pid of this process's child that listens on ``port`` (``ursa serve``)."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            if any(c.laddr.port == port for c in child.net_connections("tcp")):
                return child.pid
        except psutil.Error:
            continue
    raise LookupError(f"No child process listens on port {port}")


def run_burst(settings: Settings, body: bytes, total: int, in_flight: int, root: Path) -> Burst:
    import uvloop

    with server_process(settings, startup_s=600) as url:  # slow to start on a busy machine
        pid = server_pid(settings.serve_port)
        # A few answers first: the first batches are slow, and the rate is then measured.
        for _ in range(5):
            httpx.post(f"{url}/predict", content=body, headers={"content-type": "image/png"})
        # Probes on the main port always; on the health port too when the server has one,
        # and then those are what an orchestrator would be pointed at.
        targets = {"main": url}
        if settings.health_port:
            targets["health"] = f"http://{settings.serve_host}:{settings.health_port}"
        outs = {name: root / f"probes-{settings.serve_port}-{name}.txt" for name in targets}
        probers = [
            subprocess.Popen([sys.executable, __file__, "--probe", target, str(pid), str(outs[n])])
            for n, target in targets.items()
        ]
        try:
            # The probers' first lines: the server's state before the burst.
            while min(len(probe_lines(out)) for out in outs.values()) < 20:
                if any(p.poll() is not None for p in probers):
                    raise RuntimeError("A health prober exited")
                time.sleep(0.2)
            before = {name: len(probe_lines(out)) for name, out in outs.items()}
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                statuses, answered, dropped, seconds = runner.run(
                    generate_burst(url, body, total, in_flight)
                )
            time.sleep(0.5)
            metrics = httpx.get(f"{url}/metrics", timeout=60).text
        finally:
            for prober in probers:
                prober.terminate()
                prober.wait(timeout=30)
    lines = {name: probe_lines(out) for name, out in outs.items()}
    during = {name: lines[name][before[name] :] for name in outs}
    used = "health" if "health" in outs else "main"
    main_lines = lines["main"]
    return Burst(
        statuses=statuses,
        answered=answered,
        dropped=dropped,
        seconds=seconds,
        probes=[took for ok, took, _ in during[used] if ok],
        probe_failures=sum(1 for ok, _, _ in during[used] if not ok),
        main_probes=[took for ok, took, _ in during["main"] if ok],
        rss_before=max(rss for _, _, rss in main_lines[: before["main"]]),
        rss_peak=max(rss for _, _, rss in main_lines),
        loop_lag=slowest_bucket(metrics, "ursa_event_loop_lag_seconds"),
    )


def slowest_bucket(metrics: str, histogram: str) -> float:
    """The smallest bucket bound that holds every observation of ``histogram``."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith(f"{histogram}_bucket{{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.split()[-1])))
    total = max(count for _, count in buckets)
    return min(bound for bound, count in buckets if count == total)


def probe_lines(out: Path) -> list[tuple[bool, float, int]]:
    rows = []
    text = out.read_text() if out.exists() else ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4:
            rows.append((parts[1] == "1", float(parts[2]), int(parts[3])))
    return rows


def measure_burst(total: int, in_flight: int, rounds: int, root: Path) -> list[dict[str, Burst]]:
    """Per round: the unbounded server (no queue bound, no deadline), then the default one."""
    data_dir = root / "burst-32"
    data_dir.mkdir()
    settings = register_model(data_dir, "burst32", 32)
    body = upload(32)
    configurations = {
        "unbounded (URSA_MAX_QUEUE=0, URSA_REQUEST_TIMEOUT_S=0)": {
            "max_queue": 0,
            "request_timeout_s": 0.0,
        },
        "ursa defaults, probes on URSA_HEALTH_PORT": {"health_port": free_port()},
    }
    results = []
    for _ in range(rounds):
        results.append(
            {
                name: run_burst(
                    replace(settings, serve_port=free_port(), **changes),
                    body,
                    total,
                    in_flight,
                    data_dir,
                )
                for name, changes in configurations.items()
            }
        )
    return results


def report_burst(results: list[dict[str, Burst]], total: int, in_flight: int) -> None:
    print()
    print(f"Open burst: {total} requests, {in_flight} in flight, resnet18 32px")
    print()
    print(
        "| round | server | seconds | 200 | 503 | dropped | shed | p50 answered ms "
        "| p99 answered ms | slowest answered ms | slowest probe ms | probes failed "
        "| slowest main-port probe ms | RSS growth MB | event-loop lag ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for number, burst in enumerate(results, 1):
        for name, b in burst.items():
            print(
                f"| {number} | {name} | {b.seconds:.1f} | {b.statuses.get(200, 0)} "
                f"| {b.statuses.get(503, 0)} | {b.dropped} | {100 * b.shed_share:.0f}% "
                f"| {1000 * percentile(b.answered, 50):.0f} | {1000 * b.p99_answered:.0f} "
                f"| {1000 * max(b.answered, default=float('nan')):.0f} "
                f"| {1000 * b.slowest_probe:.0f} | {b.probe_failures} "
                f"| {1000 * max(b.main_probes, default=float('inf')):.0f} "
                f"| {(b.rss_peak - b.rss_before) / 2**20:.0f} | ≤ {1000 * b.loop_lag:.0f} |"
            )
    print()
    names = list(results[0])
    base, ours = names[0], names[1]

    def median(name: str, figure) -> float:
        return statistics.median(figure(burst[name]) for burst in results)

    n = len(results)
    probe_base = median(base, lambda b: b.slowest_probe)
    probe_ours = median(ours, lambda b: b.slowest_probe)
    p99_base = median(base, lambda b: b.p99_answered)
    p99_ours = median(ours, lambda b: b.p99_answered)
    print(
        f"burst slowest health probe, median of {n}: {1000 * probe_ours:.0f} ms "
        f"(unbounded {1000 * probe_base:.0f} ms, {probe_base / probe_ours:.1f}x) (goal 100 ms)"
    )
    print(
        f"burst p99 of answered requests, median of {n}: {1000 * p99_ours:.0f} ms "
        f"(unbounded {1000 * p99_base:.0f} ms, {p99_base / p99_ours:.1f}x) (goal 2000 ms)"
    )
    growth = median(ours, lambda b: (b.rss_peak - b.rss_before) / 2**20)
    growth_base = median(base, lambda b: (b.rss_peak - b.rss_before) / 2**20)
    print(
        f"burst peak RSS growth, median of {n}: {growth:.0f} MB "
        f"(unbounded {growth_base:.0f} MB) (goal 300 MB)"
    )
    shed = median(ours, lambda b: b.shed_share)
    print(f"burst share shed, median of {n}: {100 * shed:.0f}% (unbounded 0%) (no goal)")


# -- the report -------------------------------------------------------------------------


@dataclass
class Round:
    naive: dict[int, Load]  # per torch thread count
    ceiling: float  # images/s of the best configuration, timed right before Ursa's run
    ursa: Load
    mean_batch: float

    @property
    def best_naive(self) -> Load:
        return max(self.naive.values(), key=lambda load: load.throughput)

    @property
    def speedup(self) -> float:
        return self.ursa.throughput / self.best_naive.throughput

    @property
    def share(self) -> float:
        return self.ursa.throughput / self.ceiling


def measure(
    label: str, image_size: int, clients: int, seconds: float, rounds: int, root: Path
) -> dict:
    from ursa.package import load_package

    data_dir = root / f"{label}-{image_size}"
    data_dir.mkdir()
    settings = register_model(data_dir, f"bench{image_size}", image_size)
    body = upload(image_size)
    # The best configuration is chosen once; each round then times it afresh, so that the
    # ceiling is the model's speed there, not the luckiest of a dozen one-second samples.
    package = load_package(settings.champion_uri, settings.tracking_uri)
    rates = forward_rates(package)
    best = max(rates, key=rates.get)
    results = []
    for _ in range(rounds):
        # The naive server gets its best torch thread count: the baseline is not handicapped.
        naive = {}
        for threads in (1, 2):
            with naive_process(settings, free_port(), threads) as url:
                naive[threads] = run_load(url, body, clients, seconds)
        # Timed right before Ursa's run: the machine is shared, so its speed drifts.
        ceiling = forward_rate(package, *best, seconds=3.0)
        ursa_settings = Settings(**{**settings.__dict__, "serve_port": free_port()})
        with server_process(ursa_settings) as url:
            ursa = run_load(url, body, clients, seconds)
            metrics = httpx.get(f"{url}/metrics").text
        results.append(Round(naive, ceiling, ursa, mean_batch(metrics)))
    return {
        "model": f"{label} {image_size}px",
        "best": best,
        "rates": rates,
        "rounds": results,
    }


def mean_batch(metrics: str) -> float:
    """The mean batch size in a /metrics page (its batch-size histogram's sum / count)."""
    lines = [line for line in metrics.splitlines() if line.startswith("ursa_batch_size_")]
    count = float(next(x for x in lines if "_count" in x).split()[-1])
    total = float(next(x for x in lines if "_sum" in x).split()[-1])
    return total / count if count else 0.0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-server":
        serve_naive(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per server")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per model; figures are their medians"
    )
    parser.add_argument(
        "--part", choices=("throughput", "burst", "all"), default="all", help="what to measure"
    )
    parser.add_argument("--burst", type=int, default=3000, help="requests in the open burst")
    parser.add_argument("--in-flight", type=int, default=1000, help="burst requests at a time")
    args = parser.parse_args()
    if args.part in ("burst", "all"):
        with tempfile.TemporaryDirectory(prefix="ursa-bench-burst-") as tmp:
            bursts = measure_burst(args.burst, args.in_flight, args.rounds, Path(tmp))
        report_burst(bursts, args.burst, args.in_flight)
    if args.part == "burst":
        return

    import torch

    print(
        f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
        f"clients: {args.clients}, {args.seconds:g} s measured per server after 3 s warm-up, "
        f"{args.rounds} round(s)"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="ursa-bench-serve-") as tmp:
        for image_size in (64, 32):
            results.append(
                measure("resnet18", image_size, args.clients, args.seconds, args.rounds, Path(tmp))
            )

    print()
    print("| model | round | server | req/s | p50 ms | p99 ms | failed | vs naive | of ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for number, rnd in enumerate(r["rounds"], 1):
            rows = [(f"naive, {t} torch thread(s)", load) for t, load in rnd.naive.items()]
            rows.append(("ursa (batching)", rnd.ursa))
            for name, load in rows:
                print(
                    f"| {r['model']} | {number} | {name} | {load.throughput:.0f} "
                    f"| {1000 * load.percentile(50):.1f} | {1000 * load.percentile(99):.1f} "
                    f"| {load.failures} | {load.throughput / rnd.best_naive.throughput:.2f}x "
                    f"| {100 * load.throughput / rnd.ceiling:.0f}% |"
                )
    print()
    for r in results:
        rounds = r["rounds"]
        batch, threads = r["best"]
        by_batch = {b: max(v for (bb, _), v in r["rates"].items() if bb == b) for b in BATCH_SIZES}
        typical = statistics.median(rnd.mean_batch for rnd in rounds)
        near = min(BATCH_SIZES, key=lambda b: abs(b - typical))
        print(
            f"{r['model']}: best forward pass at batch {batch}, {threads} thread(s); ceiling "
            f"per round {', '.join(f'{rnd.ceiling:.0f}' for rnd in rounds)} img/s; "
            f"Ursa per round {', '.join(f'{rnd.ursa.throughput:.0f}' for rnd in rounds)} req/s "
            f"(mean batch {', '.join(f'{rnd.mean_batch:.1f}' for rnd in rounds)}); "
            f"speed at batch 1 / {near} / {batch} in the sweep: {by_batch[1]:.0f} / "
            f"{by_batch[near]:.0f} / {by_batch[batch]:.0f} img/s"
        )
    print()
    for r in results:
        goal = r["model"] == "resnet18 64px"
        rounds = r["rounds"]
        speedup = statistics.median(rnd.speedup for rnd in rounds)
        share = statistics.median(rnd.share for rnd in rounds)
        print(
            f"serve throughput vs naive, {r['model']}, median of {len(rounds)}: "
            f"{speedup:.2f}x ({'goal 2.5x' if goal else 'no goal'})"
        )
        print(
            f"serve throughput vs in-process ceiling, {r['model']}, median of {len(rounds)}: "
            f"{100 * share:.0f}% ({'goal 60%' if goal else 'no goal'})"
        )


if __name__ == "__main__":
    main()
