"""The data folder's layout: the one place that names its folders and shared files.

Modules that own a file format name their files inside these folders (the ledger in
``cleaning/``, the prediction log in ``predictions/``); nothing else spells out a folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def around(cls, entry: str | Path) -> Layout:
        """The layout holding ``entry``, an entry of one of its folders: a dataset manifest
        (``datasets/<name>.csv``), a cache (``cache/<name>``), the ranking's files."""
        return cls(Path(entry).parent.parent)

    # Ingest: content-addressed downloads, verified images, rejected files by reason.
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def url_manifest(self) -> Path:
        return self.manifests / "urls.csv"

    # What the ingest stages hand each other (files, not lists of rows): the URLs as listed
    # by the source, then as downloaded; verification writes the URL manifest from the latter.
    @property
    def listed_manifest(self) -> Path:
        return self.manifests / "urls.listed.csv"

    @property
    def downloaded_manifest(self) -> Path:
        return self.manifests / "urls.downloaded.csv"

    @property
    def journal(self) -> Path:
        """The download journal: a line per settled URL, what a resumed ingest skips."""
        return self.manifests / "urls.journal.jsonl"

    @property
    def ingest_lock(self) -> Path:
        return self.manifests / "ingest.lock"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def urls(self) -> Path:
        """URL lists exported by the local image host for the embedded default."""
        return self.root / "urls"

    @property
    def embedded(self) -> Path:
        return self.root / "embedded"

    @property
    def photos(self) -> Path:
        return self.root / "photos"

    # Datasets and training.
    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset_manifest(self, name: str = "dataset") -> Path:
        return self.datasets / f"{name}.csv"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    # After training: cleaning, the server's records, logs.
    @property
    def cleaning(self) -> Path:
        return self.root / "cleaning"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def feedback(self) -> Path:
        return self.root / "feedback"

    @property
    def logs(self) -> Path:
        return self.root / "logs"
