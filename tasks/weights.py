"""Pretrained weights, the way torchvision gets them: the file its weights enum names
(``get_model_weights(arch).DEFAULT.url``), kept in torch's hub cache
(``torch.hub.get_dir()/checkpoints/``) and checked against the sha256 prefix in its name
(``torch.hub.HASH_REGEX``, as ``load_state_dict_from_url(check_hash=True)`` does).

The download is torch.hub's ``download_url_to_file`` with a timeout: torch's own has none,
so on a machine whose network drops packets it would hang instead of failing. Like torch's,
it writes a ``.partial`` file beside the target and moves it into place only once the hash
matches, so a corrupt or truncated download leaves nothing in the cache.

``mirror`` (``URSA_WEIGHTS_MIRROR``) is a base URL that replaces torchvision's weights host
(scheme and host; the path is kept), as companies behind a proxy or in an air-gapped network
mirror download.pytorch.org.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import torch
import torchvision
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

if TYPE_CHECKING:
    from tasks.train import TrainConfig

# Seconds to connect and between two reads: offline, the failure comes this fast at worst.
TIMEOUT_S = 10.0
_CHUNK = 1 << 20


class WeightsUnavailable(RuntimeError):
    """Pretrained weights were asked for but could not be found or downloaded."""


def weights_url(arch: str, mirror: str = "") -> str:
    """Where torchvision downloads ``arch``'s default weights from, or the same path on
    ``mirror``."""
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    if not mirror:
        return url
    return mirror.rstrip("/") + urlsplit(url).path


def cached_weights_path(arch: str) -> Path:
    """Where torchvision keeps ``arch``'s default weights once downloaded."""
    name = Path(urlsplit(weights_url(arch)).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def local_weights_file(arch: str, weights_path: str = "") -> Path | None:
    """``weights_path`` when it is a file, else the hub cache's file when present."""
    for path in (Path(weights_path) if weights_path else None, cached_weights_path(arch)):
        if path is not None and path.is_file():
            return path
    return None


def pretrained_weights_file(arch: str, weights_path: str = "", mirror: str = "") -> Path:
    """The local weights file for ``arch``, downloaded into the hub cache when missing.

    Raises :class:`WeightsUnavailable` with where it looked, what the download said, and the
    ways out.
    """
    found = local_weights_file(arch, weights_path)
    if found is not None:
        return found
    target = cached_weights_path(arch)
    url = weights_url(arch, mirror)
    try:
        download_checked(url, target)
    except (OSError, HTTPException, ValueError) as exc:  # refused, timed out, truncated, bad hash
        looked = [weights_path, str(target)] if weights_path else [str(target)]
        raise WeightsUnavailable(
            f"Pretrained weights for '{arch}' were not found at {', '.join(looked)}, and "
            f"downloading {url} failed: {_reason(exc)}. Put the file there, pass a local "
            f"file as weights_path (--weights), set URSA_WEIGHTS_MIRROR to a mirror of "
            f"download.pytorch.org, train with pretrained=False, or choose "
            f"if_no_weights='scratch' (--if-no-weights scratch) to fall back to training "
            f"from scratch."
        ) from exc
    return target


def download_checked(url: str, target: Path, timeout_s: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``target``, checking the sha256 prefix that the file name carries;
    a progress bar on stderr. Raises ValueError when the bytes do not match their name."""
    match = torch.hub.HASH_REGEX.search(target.name)
    prefix = match.group(1) if match else ""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
    try:
        with urlopen(Request(url, headers={"User-Agent": "torch.hub"}), timeout=timeout_s) as r:
            # Said once the host answered: a refused download ends in one line, the error.
            print(f'Downloading: "{url}" to {target}', file=sys.stderr)
            size = int(r.headers.get("Content-Length") or 0) or None
            digest = hashlib.sha256()
            with partial.open("wb") as out, _bar(size) as advance:
                while chunk := r.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
        received = partial.stat().st_size
        if size is not None and received != size:
            raise ValueError(
                f"the download is truncated: {received} of {size} bytes arrived; nothing was "
                f"kept in {target.parent}"
            )
        got = digest.hexdigest()
        if not got.startswith(prefix):
            raise ValueError(
                f"the file is corrupt or truncated: its sha256 is {got}, but its name says it "
                f"starts with {prefix}; nothing was kept in {target.parent}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def resolve_weights(config: TrainConfig, mirror: str = "") -> tuple[TrainConfig, str]:
    """Find or download pretrained weights once, before any trial starts; returns (config
    with ``weights_path`` naming the file, note).

    Missing weights with ``if_no_weights="scratch"`` give a config that trains from scratch
    and a note that says why; with ``"fail"`` they raise :class:`WeightsUnavailable`.
    """
    if not config.pretrained:
        return config, "trained from scratch (pretrained=False)"
    try:
        path = pretrained_weights_file(config.arch, config.weights_path, mirror)
    except WeightsUnavailable as exc:
        if config.if_no_weights == "scratch":
            return replace(config, pretrained=False), f"trained from scratch: {exc}"
        raise
    return replace(config, weights_path=str(path)), f"fine-tuned from pretrained weights {path}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, URLError) and not isinstance(exc.reason, str):
        exc = exc.reason  # the socket error: "Connection refused", "timed out"
    return f"{type(exc).__name__}: {exc}"


@contextmanager
def _bar(total: int | None) -> Iterator[Callable[[int], None]]:
    """A byte progress bar on stderr (rich), as torch.hub shows one (tqdm)."""
    columns = (*Progress.get_default_columns()[:-1], DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("weights", total=total)
        yield lambda n: progress.advance(task, n)
