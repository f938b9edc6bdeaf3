"""A sharded ingest for real: a Prefect server, two process workers, two shard flow runs
started through the ``ingest-shard`` deployment, one dataset merged from their parts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.demo import free_port
from app.processes import wait_until_healthy
from app.stack import stop_process_group
from standins.imagehost import ImageHost
from tasks.manifest import ImageRow, UrlRow, load_dataset, read_rows
from tasks.shards import shard_of

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _url_lists(host: ImageHost, digits: Path, dest: Path) -> tuple[str, str]:
    """Six digits of each of three classes, and one of them listed again under another URL
    that falls into the other shard. Returns (original URL, its copy's URL)."""
    dest.mkdir()
    for label in ("0", "1", "2"):
        names = sorted(p.name for p in (digits / label).glob("*.png"))[:6]
        urls = [f"{host.base_url}/img/{label}/{n}" for n in names]
        if label == "0":
            original = urls[0]
            copy = next(
                f"{original}?copy={i}"
                for i in range(100)
                if shard_of(f"{original}?copy={i}", 2) != shard_of(original, 2)
            )
            urls.append(copy)
        (dest / f"{label}.txt").write_text("".join(u + "\n" for u in urls))
    return original, copy


def _start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def test_two_shards_run_on_two_workers_and_merge_into_one_dataset(
    tmp_path: Path, digits: Path, host: ImageHost
) -> None:
    data = tmp_path / "data"
    original, copy = _url_lists(host, digits, tmp_path / "lists")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "URSA_DATA_DIR": str(data),
        "URSA_PROJECT_DIR": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[tuple[subprocess.Popen, int]] = []
    try:
        server = _start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            logs / "server.log",
        )
        started.append((server, signal.SIGTERM))
        wait_until_healthy(
            server, f"http://127.0.0.1:{port}/api/health", "prefect", logs / "server.log", 300
        )
        for argv in (
            ["work-pool", "create", "ursa", "--type", "process"],
            ["--no-prompt", "deploy", "--name", "ingest-shard"],
        ):
            subprocess.run(
                [str(BIN / "prefect"), *argv], cwd=ROOT, env=env, check=True, capture_output=True
            )
        # One flow run at a time each: two shards started together need both workers.
        workers = [
            _start(
                [str(BIN / "prefect"), "worker", "start", "--pool", "ursa", "--limit", "1"],
                env,
                logs / f"worker-{i}.log",
            )
            for i in range(2)
        ]
        started += [(w, signal.SIGINT) for w in workers]  # a worker stops on SIGINT
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "ingest", str(tmp_path / "lists"), "--shards", "2"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        worker_logs = "".join(p.read_text()[-2000:] for p in sorted(logs.glob("worker-*.log")))
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + worker_logs
    finally:
        for process, sig in reversed(started):
            stop_process_group(process.pid, sig, timeout_s=20)

    shards = [data / "shards" / "2" / str(k) for k in range(2)]
    ran_on = {json.loads((s / "worker.json").read_text())["parent_pid"] for s in shards}
    assert ran_on == {w.pid for w in workers}, "each shard ran on a worker of its own"

    listed = 19
    merged = read_rows(data / "manifests" / "urls.csv", UrlRow)
    assert len(merged) == listed and all(r.outcome == "ok" for r in merged)
    parts = [read_rows(s / "manifests" / "urls.csv", UrlRow) for s in shards]
    assert sorted(len(p) for p in parts) != [0, listed] and sum(map(len, parts)) == listed
    by_url = {r.url: r for r in merged}
    # Both shards fetched the same bytes; the merged paths point into each shard's folder.
    assert by_url[original].sha256 == by_url[copy].sha256
    assert by_url[original].image_path.split("/")[:3] != by_url[copy].image_path.split("/")[:3]
    assert all((data / r.image_path).exists() for r in merged)

    dataset = load_dataset(data / "datasets" / "dataset.csv")
    rows = read_rows(Path(dataset.manifest_path), ImageRow)
    assert sum(r.sha256 == by_url[original].sha256 for r in rows) == 1, "deduplicated across shards"
    assert dataset.n_train + dataset.n_valid == 18


def test_shards_split_by_url_and_merge_with_paths_into_their_folders(tmp_path: Path) -> None:
    from tasks.manifest import write_rows
    from tasks.shards import merged_rows, write_shards
    from ursa.layout import Layout

    urls = [f"http://h/{i % 40}.png" for i in range(50)]  # ten URLs listed twice
    parts = write_shards((UrlRow(url=u, label="a") for u in urls), tmp_path, 3)
    listed = [
        [line.split(",")[0] for line in Path(p.urls_csv).read_text().splitlines()[1:]]
        for p in parts
    ]
    assert sorted(u for part in listed for u in part) == sorted(urls)
    for k, part in enumerate(listed):
        assert all(shard_of(u, 3) == k for u in part)  # a repeated URL stays in one shard
    for part in parts:
        rows = [
            UrlRow(url=line.split(",")[0], label="a", outcome="ok", raw_path="raw/x.png")
            for line in Path(part.urls_csv).read_text().splitlines()[1:]
        ]
        write_rows(Layout(Path(part.folder)).url_manifest, rows, UrlRow)
    merged = list(merged_rows(tmp_path, parts))
    assert len(merged) == 50
    assert {r.raw_path for r in merged} == {f"shards/3/{k}/raw/x.png" for k in range(3)}
    assert all(r.image_path == "" for r in merged)
