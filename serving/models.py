"""The model being served: resolved from the registry's champion alias and hot-swapped.

A reload loads and warms the new version completely before it replaces the old one, so
requests never wait on a load and a broken version never takes the place of a working one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from PIL import Image

from ursa.package import ModelPackage, PackageError, load_package, resize_policy, resize_size
from ursa.registry import CHAMPION, NOT_FOUND


class NoChampion(LookupError):
    """The registry has no such model, or the model has no champion alias yet."""


@dataclass(frozen=True)
class LoadedModel:
    package: ModelPackage
    name: str
    version: str
    run_id: str
    loaded_at: datetime

    @property
    def classes(self) -> list[str]:
        return self.package.classes

    def describe(self) -> dict:
        return {
            "model": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "classes": self.classes,
            "image_size": self.package.meta["image_size"],
            "resize": resize_policy(self.package.meta),
            "resize_size": resize_size(self.package.meta),
            "loaded_at": self.loaded_at.isoformat(),
        }


@dataclass(frozen=True)
class Reload:
    current: LoadedModel
    previous: LoadedModel | None

    @property
    def changed(self) -> bool:
        return self.previous is None or self.previous.version != self.current.version


class ModelHolder:
    """Holds the served model and swaps in a new champion atomically."""

    def __init__(self, name: str, tracking_uri: str) -> None:
        self.name = name
        self.tracking_uri = tracking_uri
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()
        # Versions that failed to load, with why: polling does not retry them every tick.
        self.refused: dict[str, PackageError] = {}

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def reload(self, retry_refused: bool = True) -> Reload:
        """Load the version the champion alias points at, unless it is already served.

        Blocking (registry calls, artifact download, a warm-up prediction): call it from a
        worker thread. Raises :class:`NoChampion` or :class:`PackageError`; on either the
        current model keeps serving. With ``retry_refused=False`` a version that failed
        before fails again at once, without another download.
        """
        with self._reload_lock:
            previous = self._current
            version, run_id = self._champion()
            if previous is not None and previous.version == version:
                return Reload(current=previous, previous=previous)
            if not retry_refused and version in self.refused:
                raise self.refused[version]
            try:
                package = load_package(f"models:/{self.name}/{version}", self.tracking_uri)
                warm_up(package)
            except PackageError as exc:
                refusal = PackageError(f"Version {version} of '{self.name}' is refused: {exc}")
                self.refused[version] = refusal
                raise refusal from exc
            self.refused.pop(version, None)
            # The swap is one reference assignment: a batch holds whichever model it started
            # with, so requests in flight finish on the old model, new ones get the new.
            self._current = LoadedModel(
                package=package,
                name=self.name,
                version=version,
                run_id=run_id or "",
                loaded_at=datetime.now(UTC),
            )
            return Reload(current=self._current, previous=previous)

    def _champion(self) -> tuple[str, str | None]:
        client = MlflowClient(self.tracking_uri, registry_uri=self.tracking_uri)
        try:
            version = client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException as exc:
            if exc.error_code in NOT_FOUND:
                raise NoChampion(f"No '{self.name}@{CHAMPION}' in the model registry.") from exc
            raise
        return str(version.version), version.run_id


def warm_up(package: ModelPackage) -> None:
    """One prediction on a blank image: the first call is slow, and a bad model fails here."""
    try:
        size = int(package.meta["image_size"])
        blank = Image.new("RGB", (size, size))
        package.probabilities([blank, blank])  # the batched path too: the first call is slow
        probabilities = package.probabilities([blank])
    except PackageError:
        raise
    except Exception as exc:  # bad metadata values, a graph that rejects the input
        raise PackageError(
            f"Model at '{package.uri}' fails on a blank image: {type(exc).__name__}: {exc}"
        ) from exc
    if probabilities.shape != (1, len(package.classes)) or not np.isfinite(probabilities).all():
        raise PackageError(
            f"Model at '{package.uri}' gave unusable output on a blank image: "
            f"shape {probabilities.shape}."
        )
