"""Accepted feedback in the pipeline: the images people corrected, as rows for ingest.

A reviewer's ``accept`` on the review page appends an ``add`` entry to the cleaning ledger
(:mod:`ursa.feedback`); here each such image, kept by the server's prediction log, becomes a
settled row whose url is ``feedback:<sha256>``, so the dataset manifest says where it came
from (``source=feedback``). The image's bytes are copied into ``raw/`` by content, as for a
folder of local images.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tasks.manifest import UrlRow
from tasks.sources import local_file_row
from ursa.feedback import URL_SCHEME
from ursa.layout import Layout
from ursa.ledger import additions, read_entries
from ursa.predictions import images_dir, kept_answer

log = logging.getLogger(__name__)


def feedback_rows(data_dir: Path, ledger_file: Path) -> list[UrlRow]:
    """One settled row per image added through accepted feedback and still kept."""
    rows = []
    for sha, entry in sorted(additions(read_entries(ledger_file)).items()):
        answer = kept_answer(data_dir, sha)
        if answer is None:  # expired from the log (retention) before an ingest took it
            log.warning("Accepted feedback image %s is no longer kept; skipped.", sha[:12])
            continue
        raw = Layout(data_dir).raw
        raw.mkdir(parents=True, exist_ok=True)
        row = local_file_row(images_dir(data_dir) / answer["file"], entry.label, raw)
        row.url = f"{URL_SCHEME}{sha}"
        rows.append(row)
    return rows
