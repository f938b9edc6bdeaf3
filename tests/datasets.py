"""Small real datasets for tests: the embedded digits written out and split, no network."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tasks.dedup import phash, pixel_hash
from tasks.manifest import Dataset, ImageRow, write_dataset
from ursa.embedded import write_embedded_images


def digits_dataset(data_dir: Path, per_class: int = 20, classes: int = 10) -> Dataset:
    """The first ``per_class`` digits of each of ``classes`` classes, every 4th one in valid."""
    root = write_embedded_images(data_dir / "embedded")
    rows: list[ImageRow] = []
    for label in sorted(p.name for p in root.iterdir() if p.is_dir())[:classes]:
        for i, path in enumerate(sorted((root / label).glob("*.png"))[:per_class]):
            image = Image.open(path).convert("RGB")
            name = f"{label}-{path.stem}"
            target = data_dir / "images" / f"{name}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target)
            rows.append(
                ImageRow(
                    sha256=name,
                    image_path=f"images/{name}.png",
                    label=label,
                    url=f"file:{path}",
                    width=image.width,
                    height=image.height,
                    pixel_hash=pixel_hash(image),
                    phash=f"{phash(image):016x}",
                    group=name,
                    split="valid" if i % 4 == 0 else "train",
                )
            )
    return write_dataset(data_dir, rows)
