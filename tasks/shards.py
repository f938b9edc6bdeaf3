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
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID

from tasks.manifest import UrlRow, iter_rows
from ursa.files import atomic_writer
from ursa.layout import Layout


@dataclass(frozen=True)
class Shard:
    """One shard's work: what a shard flow run needs, as plain strings (flow parameters)."""

    index: int
    count: int
    folder: str  # absolute: the shard's data folder
    urls_csv: str  # absolute: its URL list


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
