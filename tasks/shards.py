"""An ingest cut into shards: each shard's URLs are downloaded and verified by a flow run of
its own (on any Prefect worker that reaches the data folder), and one merge builds the
dataset from every shard's manifest part.

Layout, under the data folder that every worker reaches (a shared file system)::

    shards/<n>/<k>/urls.csv                 the shard's URL list (url, label)
    shards/<n>/<k>/raw/, images/, ...       its downloads, verified images, quarantine
    shards/<n>/<k>/manifests/urls.csv       its manifest part (paths relative to the shard)
    shards/<n>/<k>/manifests/urls.journal.jsonl, ingest.lock   its own resume and lock

A shard is a data folder of its own: shards never share a lock, a journal or a temporary
file, so they run side by side; a rerun of a shard resumes from its own journal. The merge
prefixes the part's paths with the shard's folder, so the dataset points into the shards and
no image is copied. Dedup runs on the merged rows: the same picture fetched by two shards is
one group, whichever shards found it.

With one shard there is nothing to cut: the download runs in the ingest's own flow run, and
its rows are verified there, together with the images added from feedback.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID

from prefect.exceptions import ObjectNotFound

from tasks.download import DownloadOptions, download_task
from tasks.manifest import UrlRow, iter_rows, write_rows
from ursa.files import atomic_writer
from ursa.layout import Layout

SHARD_DEPLOYMENT = "ingest-shard/ingest-shard"  # prefect.yaml
SHARD_POLL_S = 2.0


@dataclass(frozen=True)
class Shard:
    """One shard's work: what a shard flow run needs, as plain strings (flow parameters)."""

    index: int
    count: int
    folder: str  # absolute: the shard's data folder
    urls_csv: str  # absolute: its URL list


def downloaded_manifest(
    listed: Path,
    data_dir: Path,
    options: DownloadOptions,
    fresh: bool,
    shards: int,
    chunk_rows: int,
    run_here: Callable[..., str],
) -> Path:
    """The URL manifest ``listed``, downloaded, as the data folder's downloaded manifest: in
    this flow run when ``shards`` is 1, else cut into that many shards, each downloaded and
    verified by a shard flow run (verification then passes their rows through), and merged.

    ``run_here`` is the shard flow, run in this process, one shard after another, when there
    is no shard deployment to start runs of; the ingest flow hands it in (tasks never import
    flows). A rerun resumes from the download journals unless ``fresh``.
    """
    if shards == 1:
        return download_task(listed, data_dir, options, not fresh, chunk_rows)
    parts = write_shards(iter_rows(listed, UrlRow), data_dir, shards)
    _run_shards(parts, options, fresh, run_here)
    target = Layout(data_dir).downloaded_manifest
    return write_rows(target, merged_rows(data_dir, parts), UrlRow)


def shard_of(url: str, shards: int) -> int:
    """A URL's shard: stable across runs and machines, and the same URL always in one shard
    (so a repeated URL is still fetched once, and a rerun finds it in the same journal)."""
    return int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big") % shards


def write_shards(rows: Iterable[UrlRow], data_dir: Path, shards: int) -> list[Shard]:
    """Write each shard's URL list; returns the shards, in order."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}.")
    root = Layout(Path(data_dir).resolve()).shards / str(shards)
    out = [
        Shard(k, shards, str(root / str(k)), str(root / str(k) / "urls.csv")) for k in range(shards)
    ]
    with contextlib.ExitStack() as files:
        writers = []
        for shard in out:
            writer = csv.writer(
                files.enter_context(atomic_writer(Path(shard.urls_csv))), lineterminator="\n"
            )
            writer.writerow(["url", "label"])
            writers.append(writer)
        for row in rows:
            if row.outcome:
                raise ValueError(
                    f"Row {row.url!r} is settled before download ({row.outcome}): shards "
                    f"split URL lists, not local image folders."
                )
            writers[shard_of(row.url, shards)].writerow([row.url, row.label])
    return out


def record_worker(shard_folder: Path) -> None:
    """Note which machine and process ran the shard (``worker.json``): on a cluster, where to
    look for its logs."""
    info = {"host": socket.gethostname(), "pid": os.getpid(), "parent_pid": os.getppid()}
    path = Path(shard_folder) / "worker.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info))


def merged_rows(data_dir: Path, shards: list[Shard]) -> Iterator[UrlRow]:
    """Every shard's manifest part, its paths made relative to ``data_dir``."""
    data_dir = Path(data_dir).resolve()
    for shard in shards:
        folder = Path(shard.folder)
        part = Layout(folder).url_manifest  # a shard's folder is laid out as a data folder
        if not part.exists():
            raise FileNotFoundError(
                f"Shard {shard.index + 1} of {shard.count} left no manifest part at {part}: "
                f"its flow run did not finish."
            )
        prefix = folder.relative_to(data_dir).as_posix()
        for row in iter_rows(part, UrlRow):
            yield replace(
                row,
                raw_path=f"{prefix}/{row.raw_path}" if row.raw_path else "",
                image_path=f"{prefix}/{row.image_path}" if row.image_path else "",
            )


def wait_for_runs(run_ids: list[UUID], poll_s: float = 2.0) -> None:
    """Return once every flow run has finished; raise, naming it, if one did not complete."""
    from prefect.client.orchestration import get_client

    pending = set(run_ids)
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(poll_s)
            for run_id in list(pending):
                run = client.read_flow_run(run_id)
                if run.state is None or not run.state.is_final():
                    continue
                pending.discard(run_id)
                if not run.state.is_completed():
                    raise RuntimeError(
                        f"Shard flow run {run.name} ended {run.state.type.value}: "
                        f"{run.state.message or 'see its logs'}. Rerun the ingest: "
                        f"finished downloads resume from each shard's journal."
                    )


def _run_shards(
    shards: list[Shard], options: DownloadOptions, fresh: bool, run_here: Callable[..., str]
) -> None:
    """One flow run per shard on the shard deployment's workers, all at once; returns when
    all have finished. Without that deployment (no Prefect server with Ursa's deployments),
    the shards run here, one after another, through ``run_here``."""
    from prefect.deployments import run_deployment

    def parameters(shard: Shard) -> dict:
        return {
            "folder": shard.folder,
            "urls_csv": shard.urls_csv,
            "concurrency": options.concurrency,
            "per_host": options.per_host,
            "timeout_s": options.timeout_s,
            "fresh": fresh,
        }

    try:
        runs = [
            run_deployment(
                SHARD_DEPLOYMENT,
                parameters=parameters(s),
                flow_run_name=f"ingest-shard-{s.index + 1}-of-{s.count}",
                timeout=0,  # started, not awaited: the shards run side by side
            )
            for s in shards
        ]
    except ObjectNotFound:
        print(f"ingest: no deployment {SHARD_DEPLOYMENT}; running {len(shards)} shards here")
        for shard in shards:
            run_here(**parameters(shard))
        return
    print(f"ingest: {len(runs)} shard flow runs started on deployment {SHARD_DEPLOYMENT}")
    wait_for_runs([run.id for run in runs], SHARD_POLL_S)
