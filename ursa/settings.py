"""One typed settings object, read from the environment once and passed down explicitly.

Modelled on Starlette's ``Config``: every value has a cast and a default, and a bad value
raises an error that names the variable and the value at fault.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ursa.layout import Layout
from ursa.registry import CHAMPION

T = TypeVar("T")

# Rows an ingest stage works through at once (URSA_INGEST_CHUNK_ROWS). At about 1.5 KiB a row
# in memory, 2,000 rows are a few MiB; the downloader holds at most two chunks (a slow URL at
# the head of the window holds back the rows after it, never more than that).
INGEST_CHUNK_ROWS = 2_000


class SettingsError(ValueError):
    pass


def _read(env: Mapping[str, str], key: str, cast: Callable[[str], T], default: T) -> T:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(
            f"Config '{key}' has value '{raw}'. Not a valid {cast.__name__}: {exc}"
        ) from exc


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


_positive_int.__name__ = "positive int"


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


_non_negative_int.__name__ = "int >= 0"


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # also refuses NaN
        raise ValueError("must be >= 0")
    return value


_non_negative_float.__name__ = "number >= 0"


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


_names.__name__ = "comma-separated list of addresses"


def _origins(raw: str) -> tuple[str, ...]:
    return tuple(origin.rstrip("/") for origin in _names(raw))


_origins.__name__ = "comma-separated origin list"


def _base_url(raw: str) -> str:
    scheme, _, rest = raw.partition("://")
    if scheme not in ("http", "https") or not rest.strip("/"):
        raise ValueError("expected http(s)://host[:port][/path]")
    return raw.rstrip("/")


_base_url.__name__ = "http(s) base URL"


def _share(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise ValueError("must be from 0 to 1")
    return value


_share.__name__ = "share from 0 to 1"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("ursa-data")
    tracking_uri: str = ""
    experiment: str = "ursa"
    model_name: str = "ursa"
    admin_token: str = ""
    serve_url: str = ""
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    max_body_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # Ingest: rows a stage holds at once (download, verification); memory grows with it, not
    # with the number of URLs.
    ingest_chunk_rows: int = INGEST_CHUNK_ROWS
    # Serving: dynamic batching, alias polling, browser access.
    batch_max_size: int = 32
    batch_max_wait_ms: float = 5.0
    poll_interval_s: float = 30.0  # 0 turns polling off
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers at all
    # Proxies whose X-Forwarded-For/-Proto `ursa serve` believes (a TLS-ending proxy in front:
    # the review cookie is then Secure); empty: none, the client is who connected.
    trusted_proxies: tuple[str, ...] = ()
    inference_threads: int = 0  # torch threads in `ursa serve`; 0: every core
    # Overload: /predict requests in flight (None: sized from the measured batch time; 0: no
    # bound) and the deadline from a request's arrival to its answer (0: none).
    max_queue: int | None = None
    request_timeout_s: float = 5.0
    # Health probes on a port of their own, answered off the event loop (0: none).
    health_port: int = 0
    # The prediction log (serving/predictionlog.py) and feedback from people.
    log_sample: float = 1.0  # share of answers recorded; 0 turns the log off
    log_queue_size: int = 10_000  # records waiting for the writer; more are dropped
    log_rotate_bytes: int = 64 * 1024 * 1024
    log_images_max_bytes: int = 0  # bytes of uploaded images kept; 0: none kept
    log_retention_days: float = 30.0  # kept images older than this are deleted
    feedback_per_minute: int = 10  # feedback answers a client may send a minute
    # Release: accuracy a candidate must beat the champion by.
    release_margin: float = 0.0
    # Image search: a base URL that replaces the engine's host (a mirror, or a local stand-in).
    search_url: str = ""
    # Release: validation images a dataset needs before its accuracy may promote a model.
    release_min_valid: int = 20
    # Where people browse MLflow: links in Prefect artifacts point there ("" when unknown).
    mlflow_ui_url: str = ""
    # A base URL replacing torchvision's weights host (download.pytorch.org); "" for none.
    weights_mirror: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = _read(env, "URSA_DATA_DIR", Path, Path("ursa-data")).resolve()
        tracking_uri = _read(env, "MLFLOW_TRACKING_URI", str, f"sqlite:///{data_dir / 'mlflow.db'}")
        # A tracking server is also its own UI; a SQLite store has none until `mlflow ui` runs.
        default_ui = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else ""
        return cls(
            data_dir=data_dir,
            tracking_uri=tracking_uri,
            mlflow_ui_url=_read(env, "URSA_MLFLOW_UI_URL", str, default_ui).rstrip("/"),
            experiment=_read(env, "URSA_EXPERIMENT", str, "ursa"),
            model_name=_read(env, "URSA_MODEL_NAME", str, "ursa"),
            admin_token=_read(env, "URSA_ADMIN_TOKEN", str, ""),
            serve_url=_read(env, "URSA_SERVE_URL", str, "").rstrip("/"),
            serve_host=_read(env, "URSA_SERVE_HOST", str, "127.0.0.1"),
            serve_port=_read(env, "URSA_SERVE_PORT", int, 8000),
            max_body_bytes=_read(env, "URSA_MAX_BODY_BYTES", _positive_int, 10 * 1024 * 1024),
            max_image_pixels=_read(env, "URSA_MAX_IMAGE_PIXELS", _positive_int, 40_000_000),
            ingest_chunk_rows=_read(
                env, "URSA_INGEST_CHUNK_ROWS", _positive_int, INGEST_CHUNK_ROWS
            ),
            batch_max_size=_read(env, "URSA_BATCH_MAX_SIZE", _positive_int, 32),
            batch_max_wait_ms=_read(env, "URSA_BATCH_MAX_WAIT_MS", _non_negative_float, 5.0),
            poll_interval_s=_read(env, "URSA_POLL_INTERVAL_S", _non_negative_float, 30.0),
            cors_origins=_read(env, "URSA_CORS_ORIGINS", _origins, ()),
            trusted_proxies=_read(env, "URSA_TRUSTED_PROXIES", _names, ()),
            inference_threads=_read(env, "URSA_INFERENCE_THREADS", int, 0),
            max_queue=_read(env, "URSA_MAX_QUEUE", _non_negative_int, None),
            request_timeout_s=_read(env, "URSA_REQUEST_TIMEOUT_S", _non_negative_float, 5.0),
            health_port=_read(env, "URSA_HEALTH_PORT", _non_negative_int, 0),
            log_sample=_read(env, "URSA_LOG_SAMPLE", _share, 1.0),
            log_queue_size=_read(env, "URSA_LOG_QUEUE_SIZE", _positive_int, 10_000),
            log_rotate_bytes=_read(env, "URSA_LOG_ROTATE_BYTES", _positive_int, 64 * 1024 * 1024),
            log_images_max_bytes=_read(env, "URSA_LOG_IMAGES_MAX_BYTES", _non_negative_int, 0),
            log_retention_days=_read(env, "URSA_LOG_RETENTION_DAYS", _non_negative_float, 30.0),
            feedback_per_minute=_read(env, "URSA_FEEDBACK_PER_MINUTE", _positive_int, 10),
            release_margin=_read(env, "URSA_RELEASE_MARGIN", _non_negative_float, 0.0),
            search_url=_read(env, "URSA_SEARCH_URL", _base_url, ""),
            release_min_valid=_read(env, "URSA_RELEASE_MIN_VALID", _non_negative_int, 20),
            weights_mirror=_read(env, "URSA_WEIGHTS_MIRROR", _base_url, ""),
        )

    @property
    def layout(self) -> Layout:
        return Layout(self.data_dir)

    @property
    def artifact_location(self) -> str:
        """Where MLflow keeps artifacts for experiments Ursa creates (beside the database)."""
        return (self.data_dir / "mlartifacts").as_uri()

    @property
    def champion_uri(self) -> str:
        return f"models:/{self.model_name}@{CHAMPION}"
