"""Decoding untrusted image bytes: the one place that turns bytes into a safe RGB picture.

Used by verification at ingest and by the server on upload, so both accept and refuse the
same files for the same reasons. :func:`input_pixels` is the one picture-to-model-input step
(resize policy included) that training, cleaning and serving share.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Known image signatures: anything else is not an image, whatever its Content-Type says.
_SIGNATURES = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


class ImageError(ValueError):
    """Bytes that are not a usable image. ``reason`` is a manifest outcome."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sniff_extension(head: bytes) -> str | None:
    """The file extension that the first bytes announce, or None if they are no image."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _SIGNATURES:
        if head.startswith(magic):
            return ext
    return None


# Formats whose files every image reader decodes alike: such a file that already decodes to
# plain 8-bit RGB can be kept byte for byte instead of being re-encoded.
_KEEPABLE = ("jpg", "png")


@dataclass(frozen=True)
class Decoded:
    """A fully decoded image, and whether its bytes can be stored as they are."""

    image: Image.Image  # 8-bit RGB, EXIF orientation applied
    extension: str  # what the bytes announce (see sniff_extension)
    # The bytes are a JPEG or PNG that decodes by itself, single frame, no rotation, no mode
    # conversion, to exactly ``image``: storing them loses nothing and costs no re-encoding.
    keep_as_is: bool


def open_image(data: bytes, max_pixels: int = 40_000_000, min_side: int = 1) -> Image.Image:
    """Fully decode ``data`` into an RGB image, EXIF orientation applied.

    Raises :class:`ImageError` with reason ``empty``, ``not_image``, ``too_many_pixels``,
    ``too_small`` or ``corrupt``. The pixel guard is checked on the header, before decoding,
    so a decompression bomb costs nothing.
    """
    return decode_image(data, max_pixels, min_side).image


def decode_image(data: bytes, max_pixels: int = 40_000_000, min_side: int = 1) -> Decoded:
    """:func:`open_image`, also saying whether ``data`` may be stored without re-encoding."""
    if not data:
        raise ImageError("empty", "The file is empty (0 bytes).")
    extension = sniff_extension(data[:16])
    if extension is None:
        raise ImageError("not_image", f"Not an image: starts with {data[:16]!r}.")
    try:
        # Our own pixel guard runs on the header, before any decoding; Pillow's global
        # MAX_IMAGE_PIXELS stays as a second fence (its error is caught below).
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        if width * height > max_pixels:
            raise ImageError(
                "too_many_pixels",
                f"Image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {max_pixels}.",
            )
        if min(width, height) < min_side:
            raise ImageError(
                "too_small", f"Image is {width}x{height}, under the minimum side {min_side}."
            )
        frames = getattr(im, "n_frames", 1)
        im.seek(0)  # animated images: the first frame
        im.load()  # the full decode: verify() alone misses truncated data
        # The same test as exif_transpose's, made here so that an upright image is not copied.
        rotated = im.getexif().get(ExifTags.Base.Orientation, 1) in range(2, 9)
        if rotated:
            im = ImageOps.exif_transpose(im)
        keep = extension in _KEEPABLE and im.mode == "RGB" and frames == 1 and not rotated
        return Decoded(to_rgb(im), extension, keep)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too_many_pixels", f"Decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError("corrupt", f"Image does not decode: {exc}") from exc


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB; transparency is composited on white, 16-bit scaled down."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


# How a picture becomes the model's square input. "squash" stretches it to the square (right
# for scans that are square already, as the digits are; it distorts photos); "crop" scales its
# shorter side to the square and cuts the centre (fast.ai's default Resize); "pad" scales its
# longer side to the square and fills the rest with black (the whole picture, smaller).
ResizePolicy = Literal["squash", "crop", "pad"]
RESIZE_POLICIES: tuple[str, ...] = get_args(ResizePolicy)


def input_pixels(
    source: str | Path | Image.Image,
    size: int,
    policy: str = "squash",
    resize_size: int | None = None,
) -> np.ndarray:
    """An image file or picture -> uint8 RGB pixels (size, size, 3), resized by ``policy``.

    The one image-to-tensor step: training's cache, cleaning and serving all call it, so the
    model sees at serving time exactly what it was trained on. Files are read as they are
    stored (ingest has applied EXIF orientation already); one bilinear resample each way.

    ``resize_size`` (at least ``size``): the picture is resized to that square by ``policy``
    and its centre ``size`` square is cut out, as torchvision's ``Resize(256)`` +
    ``CenterCrop(224)``. The photos recipe trains on random crops of a cache stored at that
    size and validates on its centre (:func:`centre_span`): serving cuts the same centre.
    """
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"Resize policy is '{policy}', expected one of {RESIZE_POLICIES}.")
    resized = size if resize_size is None else resize_size
    if resized < size:
        raise ValueError(f"resize_size is {resized}, expected at least the size {size}.")
    if isinstance(source, Image.Image):
        im = to_rgb(source)
    else:
        with Image.open(source) as opened:
            im = to_rgb(opened)
    square = (resized, resized)
    if policy == "crop":
        im = ImageOps.fit(im, square, method=Image.Resampling.BILINEAR)
    elif policy == "pad":
        im = ImageOps.pad(im, square, method=Image.Resampling.BILINEAR, color=(0, 0, 0))
    else:
        im = im.resize(square, Image.Resampling.BILINEAR)
    pixels = np.asarray(im)
    if resized == size:
        return pixels
    centre = centre_span(resized, size)
    return np.ascontiguousarray(pixels[centre, centre])


def centre_span(full: int, size: int) -> slice:
    """The centre ``size`` of a side of ``full`` pixels (rounded towards the start): the one
    definition of the centre crop, shared by serving (:func:`input_pixels`) and training's
    validation, which cuts it from the cache (``tasks.train.model_inputs``)."""
    start = (full - size) // 2
    return slice(start, start + size)
