"""ingest: URL lists -> download -> verify -> dedup -> a dataset manifest with a split."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from standins.imagehost import embedded_url_lists
from tasks.dedup import dedup_task
from tasks.download import DownloadOptions, download_task
from tasks.feedback import feedback_rows
from tasks.ledger import load_ledger
from tasks.manifest import Dataset, UrlRow, count_rows, iter_rows, write_rows
from tasks.policies import HOUR
from tasks.reports import dataset_status_counts, outcome_counts, publish_ingest
from tasks.shards import downloaded_manifest, record_worker
from tasks.sources import EMBEDDED, iter_source
from tasks.url_lists import iter_url_lists
from tasks.verify import verify_task
from ursa.layout import Layout
from ursa.ledger import ledger_path
from ursa.settings import Settings


@dataclass
class IngestResult:
    dataset: Dataset
    url_manifest: str
    outcomes: dict[str, int]  # URL outcome -> count
    statuses: dict[str, int]  # dataset status (kept, duplicate, ...) -> count


@flow(name="ingest", log_prints=True, timeout_seconds=6 * HOUR)
def ingest(
    source: str = EMBEDDED,
    max_per_class: Annotated[int, Field(ge=1)] | None = None,
    valid_pct: Annotated[float, Field(ge=0, lt=1)] = 0.2,
    seed: Annotated[int, Field(ge=0)] = 0,
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32,
    per_host: Annotated[int, Field(ge=1, le=1024)] = 16,
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0,
    fresh: bool = False,
    ledger: str = "",
    feedback_to_valid: bool = False,
    shards: Annotated[int, Field(ge=1, le=1024)] = 1,
) -> IngestResult:
    """Build a dataset: download, verify and dedup, then split into train and valid.

    A rerun resumes from the download journal unless ``fresh``. The cleaning ledger written by
    the review page is applied: removed images leave the dataset, relabelled ones move.

    Args:
        source: Folder of <class>.txt URL lists (one URL per line), one such file, a CSV
            with a url column, a folder of class folders of images, or "embedded".
        max_per_class: Take at most this many URLs per class (empty: all).
        valid_pct: Share of each class's images held out for validation.
        seed: Seed of the train/valid split.
        concurrency: Downloads in flight at once.
        per_host: Downloads in flight at once to any one host (politeness).
        timeout_s: Deadline per URL in seconds, retries included.
        fresh: Ignore the download journal and fetch every URL again.
        ledger: Cleaning ledger to apply (empty: <data>/cleaning/ledger.jsonl).
        feedback_to_valid: Split images added from accepted feedback like the others (off:
            they all go to training, so the gate compares on the same validation data).
        shards: Split the URLs into this many shards, each downloaded and verified by a flow
            run of the ingest-shard deployment on any worker of its pool (they must all
            reach the data folder); one dataset is built from every shard's manifest part.
    """
    settings = Settings.from_env()
    data_dir = settings.data_dir
    layout = Layout(data_dir)
    chunk_rows = settings.ingest_chunk_rows
    options = DownloadOptions(concurrency=concurrency, per_host=per_host, timeout_s=timeout_s)
    # The stages hand each other manifest files, never lists of rows: each works through its
    # file a chunk at a time, so memory does not grow with the number of URLs.
    # The embedded default is served by a local image host for as long as downloads run.
    served = embedded_url_lists(data_dir, max_per_class) if source == EMBEDDED else nullcontext()
    with served as lists:  # the URL source stays up while the download or its shards run
        rows = iter_url_lists(lists) if lists else iter_source(source, data_dir, max_per_class)
        listed = write_rows(layout.listed_manifest, rows, UrlRow)
        downloaded = downloaded_manifest(
            listed, data_dir, options, fresh, shards, chunk_rows, ingest_shard
        )
    ledger_file = Path(ledger) if ledger else ledger_path(data_dir)
    added = feedback_rows(data_dir, ledger_file)  # accepted feedback: source=feedback
    url_manifest = verify_task(
        downloaded,
        data_dir,
        layout.url_manifest,
        extra=added,
        max_pixels=settings.max_image_pixels,
        workers=None,
        chunk_rows=chunk_rows,
    )
    decisions = load_ledger(ledger_file)
    dataset = dedup_task(
        url_manifest,
        data_dir,
        valid_pct=valid_pct,
        seed=seed,
        ledger=decisions,
        feedback_to_valid=feedback_to_valid,
    )
    publish_ingest(iter_rows(url_manifest, UrlRow), dataset, url_manifest)
    result = IngestResult(
        dataset=dataset,
        url_manifest=str(Path(url_manifest).resolve()),
        outcomes=outcome_counts(iter_rows(url_manifest, UrlRow)),
        statuses=dataset_status_counts(dataset),
    )
    urls = sum(result.outcomes.values())
    print(f"ingest: {urls} URLs -> {result.statuses.get('kept', 0)} images; {result.outcomes}")
    if added:
        print(f"ingest: {len(added)} images from accepted feedback (source=feedback)")
    if decisions.digest:
        print(
            f"ingest: applied {len(decisions.decisions)} review decisions from {decisions.path} "
            f"(digest {decisions.digest[:12]}); {result.statuses.get('removed', 0)} removed"
        )
    return result


@flow(name="ingest-shard", log_prints=True, timeout_seconds=6 * HOUR)
def ingest_shard(
    folder: str,
    urls_csv: str,
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32,
    per_host: Annotated[int, Field(ge=1, le=1024)] = 16,
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 10.0,
    fresh: bool = False,
) -> str:
    """Download and verify one shard of an ingest into its own folder; returns the path of
    its manifest part. Started by ``ingest`` with shards > 1.

    Args:
        folder: The shard's data folder (absolute; on storage every worker reaches).
        urls_csv: The shard's URL list, a CSV with url and label columns.
        concurrency: Downloads in flight at once.
        per_host: Downloads in flight at once to any one host (politeness).
        timeout_s: Deadline per URL in seconds, retries included.
        fresh: Ignore the shard's download journal and fetch every URL again.
    """
    settings = Settings.from_env()
    data_dir = Path(folder)
    record_worker(data_dir)
    options = DownloadOptions(concurrency=concurrency, per_host=per_host, timeout_s=timeout_s)
    chunk_rows = settings.ingest_chunk_rows
    downloaded = download_task(Path(urls_csv), data_dir, options, not fresh, chunk_rows)
    part = verify_task(
        downloaded,
        data_dir,
        Layout(data_dir).url_manifest,
        max_pixels=settings.max_image_pixels,
        workers=None,
        chunk_rows=chunk_rows,
    )
    print(f"ingest-shard: {count_rows(part)} URLs -> {part}")
    return str(part)
