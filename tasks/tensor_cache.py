"""The training cache: every kept image decoded once per dataset and size, read through a
memory map.

``<data>/cache/<digest>-<size>/`` holds ``x_train.npy`` and ``x_valid.npy`` (uint8, N x 3 x
size x size, NumPy's format: ``numpy.load(..., mmap_mode="r")`` reads them too), the labels
and ``classes.json``. The image files are allocated at their full size first, then filled in
chunks by one process per core (:mod:`tasks.pixels`), each writing its rows in place: no
process ever holds more than one image, so building takes the same memory for a thousand
images as for a million. Training maps the files instead of loading them:
the pixels live in the page cache, shared by every trial, and the kernel pages them in and
out as batches touch them. A :class:`Selection` picks images out of the maps without copying
them (cleaning's folds).

The size is the caller's: training asks for ``TrainConfig.resize_size``, the training size
for the digits and 8/7 of it for photos, which training crops per batch (:mod:`tasks.train`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.manifest import Dataset, ImageRow, iter_rows
from tasks.parallel import map_chunks, usable_cores
from tasks.pixels import DecodeChunk, decode_chunk
from ursa.layout import Layout

SPLITS = ("train", "valid")
# Images per message to a worker: its round trip costs about one image's decode, and small
# chunks keep the cores evenly busy to the end.
CHUNK_IMAGES = 64
# A worker takes a moment to start (its fork server imports the caller's main module once,
# the worker Pillow and numpy): only this many images or more repay one.
IMAGES_PER_EXTRA_WORKER = 1000


class Selection:
    """Images ``index`` of ``parts`` (maps of the cache, numbered one after the other), read
    a batch at a time: what indexing the maps would copy at once.

    Indexed as a tensor is: ``selection[positions]`` (a tensor of positions) gathers those
    images into a new tensor; ``selection[a:b:c]`` is another selection, as a tensor's slice
    is a view. Cleaning trains each fold on a selection of train + valid, so that no fold
    holds a copy of the dataset (BENCHMARKS.md, "Scale": its peak memory stays flat).
    """

    def __init__(self, parts: Sequence[torch.Tensor], index: torch.Tensor) -> None:
        self.parts = tuple(parts)
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.parts[0].shape[1:])

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.parts[0].element_size()

    def __getitem__(self, key: int | slice | torch.Tensor) -> Selection | torch.Tensor:
        if isinstance(key, slice):
            return Selection(self.parts, self.index[key])
        positions = self.index[key]  # an IndexError past the end ends an iteration
        if positions.dim() == 0:  # one image, as a tensor's x[i]
            return self._gathered(positions.view(1))[0]
        return self._gathered(positions)

    def _gathered(self, positions: torch.Tensor) -> torch.Tensor:
        out = torch.empty(
            (len(positions), *self.shape[1:]), dtype=self.parts[0].dtype, device=self.device
        )
        start = 0
        for part in self.parts:
            mine = (positions >= start) & (positions < start + len(part))
            out[mine] = part[positions[mine] - start]
            start += len(part)
        return out

    def to(self, device: torch.device) -> torch.Tensor:
        """All its images on ``device``, gathered a chunk at a time on the way: no copy of
        them all in RAM first."""
        out = torch.empty(self.shape, dtype=self.parts[0].dtype, device=device)
        for start in range(0, len(self), CHUNK_IMAGES):
            stop = min(start + CHUNK_IMAGES, len(self))
            out[start:stop] = self[torch.arange(start, stop)].to(device)
        return out


@dataclass
class Tensors:
    classes: list[str]
    x_train: torch.Tensor | Selection  # uint8 (N, 3, S, S)
    y_train: torch.Tensor
    x_valid: torch.Tensor | Selection
    y_valid: torch.Tensor


def tensor_cache(
    dataset: Dataset, image_size: int, resize: str = "squash", workers: int | None = None
) -> Path:
    """Decode the kept images once into ``<data>/cache/<digest>-<size>-<resize>/``, each by
    :func:`ursa.images.input_pixels` (as serving does); return its path.

    ``workers`` counts this process; ``None`` takes one per usable core once there are enough
    images to repay starting them. A concurrent build of the same cache is harmless: each
    writes a folder of its own and the first to finish is kept.
    """
    path = Layout(dataset.data_dir).cache / f"{dataset.digest[:16]}-{image_size}-{resize}"
    if (path / "classes.json").exists():
        return path
    index = {c: i for i, c in enumerate(dataset.classes)}
    paths: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    for row in iter_rows(Path(dataset.manifest_path), ImageRow):
        if row.status == "kept" and row.split in paths:
            paths[row.split].append(str(dataset.data_dir / row.image_path))
            labels[row.split].append(index[row.label])
    if workers is None:
        total = sum(len(p) for p in paths.values())
        workers = usable_cores() if total >= IMAGES_PER_EXTRA_WORKER else 1

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        chunks = []
        for split in SPLITS:
            target = tmp / f"x_{split}.npy"
            shape = (len(paths[split]), 3, image_size, image_size)
            # Allocated at full size, its blocks reserved at once, filled by workers: blocks
            # allocated write by write, by two writers of one file, cost the build about a
            # quarter more CPU time (BENCHMARKS.md).
            offset = np.lib.format.open_memmap(target, "w+", np.uint8, shape).offset
            reserve(target, offset, int(np.prod(shape)))
            np.save(tmp / f"y_{split}.npy", np.asarray(labels[split], dtype=np.int64))
            for start in range(0, len(paths[split]), CHUNK_IMAGES):
                piece = tuple(paths[split][start : start + CHUNK_IMAGES])
                chunks.append(DecodeChunk(str(target), offset, start, piece, image_size, resize))
        map_chunks(decode_chunk, chunks, workers)
        for split in SPLITS:  # on disk before the folder says it is complete
            with open(tmp / f"x_{split}.npy", "rb+") as fh:
                os.fsync(fh.fileno())
        # Written last: its presence says the cache is complete.
        (tmp / "classes.json").write_text(json.dumps(list(dataset.classes)))
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same cache first: keep theirs
            if not (path / "classes.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def reserve(path: Path, offset: int, length: int) -> None:
    """Allocate ``length`` bytes of ``path`` from ``offset`` on disk (``posix_fallocate``)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, offset, max(1, length))
    finally:
        os.close(fd)


def load_tensors(path: str | Path) -> Tensors:
    """The cache at ``path`` as tensors over memory maps: nothing is read until used.

    Copy-on-write maps ("c"): the tensors are writable, as torch wants, but a write would
    stay private to this process and never reach the file.
    """
    path = Path(path)

    def mapped(name: str) -> torch.Tensor:
        return torch.from_numpy(np.load(path / f"{name}.npy", mmap_mode="c"))

    return Tensors(
        classes=json.loads((path / "classes.json").read_text()),
        x_train=mapped("x_train"),
        y_train=mapped("y_train"),
        x_valid=mapped("x_valid"),
        y_valid=mapped("y_valid"),
    )
