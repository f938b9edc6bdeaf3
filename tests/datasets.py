"""Small real datasets for tests: the embedded digits written out and split, no network."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tasks.dedup import phash, pixel_hash
from tasks.manifest import Dataset, ImageRow, write_dataset
from ursa.embedded import write_embedded_images


def stored_row(
    data_dir: Path, image: Image.Image, name: str, ext: str, label: str, url: str, split: str
) -> ImageRow:
    """Save ``image`` as ``images/<name>.<ext>`` and describe it as ingest would."""
    target = data_dir / "images" / f"{name}.{ext}"
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target)
    stored = Image.open(target).convert("RGB")  # what was kept, after any lossy encoding
    return ImageRow(
        sha256=name,
        image_path=f"images/{name}.{ext}",
        label=label,
        url=url,
        width=stored.width,
        height=stored.height,
        pixel_hash=pixel_hash(stored),
        phash=f"{phash(stored):016x}",
        group=name,
        split=split,
    )


def digits_dataset(data_dir: Path, per_class: int = 20, classes: int = 10) -> Dataset:
    """The first ``per_class`` digits of each of ``classes`` classes, every 4th one in valid."""
    root = write_embedded_images(data_dir / "embedded")
    rows: list[ImageRow] = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir())[:classes]:
        for i, path in enumerate(sorted((root / label).glob("*.png"))[:per_class]):
            image = Image.open(path).convert("RGB")
            split = "valid" if i % 4 == 0 else "train"
            name = f"{label}-{path.stem}"
            rows.append(stored_row(data_dir, image, name, "png", label, f"file:{path}", split))
    return write_dataset(data_dir, rows)


def photos_dataset(data_dir: Path, per_class: int = 6, classes: int = 2) -> Dataset:
    """Small generated colour photos of unusual aspect ratios (wide 3:1 and tall 1:2, as JPEGs
    at their own sizes, not pre-resized), every 3rd one in valid. Class k is a bright disc of
    its own colour on a noisy background, placed off centre: cropping, padding and squashing
    give visibly different squares."""
    import numpy as np

    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 80, 220), (40, 200, 60), (230, 200, 30)]
    rows: list[ImageRow] = []
    for k in range(classes):
        label = f"class{k}"
        for i in range(per_class):
            width, height = (150, 50) if i % 2 == 0 else (40, 80)
            pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
            yy, xx = np.mgrid[:height, :width]
            cx, cy, r = width * (0.25 + 0.1 * (i % 3)), height * 0.5, min(width, height) / 3
            pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = colours[k]
            name, split = f"{label}-{i}", "valid" if i % 3 == 0 else "train"
            url = f"http://photos.test/{name}.jpg"
            rows.append(
                stored_row(data_dir, Image.fromarray(pixels), name, "jpg", label, url, split)
            )
    return write_dataset(data_dir, rows)
