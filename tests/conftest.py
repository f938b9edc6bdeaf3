"""Shared test set-up: every test runs offline, against its own data folder and MLflow store."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ursa.offline import set_offline_defaults

if TYPE_CHECKING:
    from standins.imagehost import ImageHost

# Telemetry fails loudly offline; Prefect must not touch the user's ~/.prefect.
set_offline_defaults(PREFECT_LOGGING_LEVEL="WARNING")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ursa-prefect-home-")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh data folder with its own SQLite MLflow store, set in the environment."""
    import mlflow

    d = tmp_path / "data"
    d.mkdir()
    uri = f"sqlite:///{d / 'mlflow.db'}"
    monkeypatch.setenv("URSA_DATA_DIR", str(d))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Code under test may set MLflow's process-wide URI; start every test on its own store.
    mlflow.set_tracking_uri(uri)
    return d


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~17 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    # ~17 s on a quiet machine; over 90 s was seen on 2 cores shared with other suites.
    with prefect_test_harness(server_startup_timeout=600):
        yield


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded digits written out once per session as <label>/<index>.png."""
    from ursa.embedded import write_embedded_images

    return write_embedded_images(tmp_path_factory.getbasetemp() / "digits")


@pytest.fixture
def host(digits: Path) -> Iterator[ImageHost]:
    """The local image host over the digits. One per test: the flaky URL fails only once."""
    from standins.imagehost import ImageHost

    with ImageHost(digits) as image_host:
        yield image_host


@pytest.fixture(scope="session")
def digits_champion(digits: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small digits dataset and its nearest-centroid model as ``digits@champion``, once per
    session (tests/digits_champion.py). Tests serve it with a data folder of their own:
    ``dataclasses.replace(digits_champion, data_dir=...)``; its own data folder holds the
    dataset, which stays read-only."""
    from tests.digits_champion import crown_centroids, digits_dataset

    data_dir = tmp_path_factory.mktemp("digits-champion") / "data"
    data_dir.mkdir()
    return crown_centroids(data_dir, digits_dataset(digits, data_dir, per_class=12))
