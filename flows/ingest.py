"""ingest: URL lists -> download -> verify -> dedup -> a dataset manifest with a split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.dedup import dedup_task
from tasks.download import DownloadOptions, download_task
from tasks.feedback import feedback_rows
from tasks.ledger import load_ledger
from tasks.manifest import Dataset, UrlRow, write_rows
from tasks.policies import HOUR
from tasks.reports import dataset_status_counts, outcome_counts, publish_ingest
from tasks.sources import EMBEDDED, url_rows
from tasks.verify import verify_task
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
    """
    settings = Settings.from_env()
    data_dir = settings.data_dir
    options = DownloadOptions(concurrency=concurrency, per_host=per_host, timeout_s=timeout_s)
    with url_rows(source, data_dir, max_per_class) as rows:
        rows = download_task(rows, data_dir, options, resume=not fresh)
    ledger_file = Path(ledger) if ledger else ledger_path(data_dir)
    added = feedback_rows(data_dir, ledger_file)  # accepted feedback: source=feedback
    rows = verify_task(rows + added, data_dir, max_pixels=settings.max_image_pixels, workers=None)
    url_manifest = write_rows(data_dir / "manifests" / "urls.csv", rows, UrlRow)
    decisions = load_ledger(ledger_file)
    dataset = dedup_task(
        rows,
        data_dir,
        valid_pct=valid_pct,
        seed=seed,
        ledger=decisions,
        feedback_to_valid=feedback_to_valid,
    )
    publish_ingest(rows, dataset, url_manifest)
    result = IngestResult(
        dataset=dataset,
        url_manifest=str(Path(url_manifest).resolve()),
        outcomes=outcome_counts(rows),
        statuses=dataset_status_counts(dataset),
    )
    print(f"ingest: {len(rows)} URLs -> {result.statuses.get('kept', 0)} images; {result.outcomes}")
    if added:
        print(f"ingest: {len(added)} images from accepted feedback (source=feedback)")
    if decisions.digest:
        print(
            f"ingest: applied {len(decisions.decisions)} review decisions from {decisions.path} "
            f"(digest {decisions.digest[:12]}); {result.statuses.get('removed', 0)} removed"
        )
    return result
