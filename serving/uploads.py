"""An uploaded image, read from a request: size-limited, content-type checked, safely decoded.

Accepted bodies: the raw image bytes (``Content-Type: image/*`` or
``application/octet-stream``) or ``multipart/form-data`` with exactly one file part.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from concurrent.futures import Executor
from dataclasses import dataclass

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from ursa.images import ImageError, open_image
from ursa.predictions import input_stats

MULTIPART = "multipart/form-data"
MAX_FORM_FIELDS = 8  # plain text fields beside the one file; more is not a client of ours
_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


class UploadError(Exception):
    """A request whose body is not an acceptable image; carries the HTTP status to answer."""

    def __init__(self, status_code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Upload:
    """An uploaded image: its pixels, its bytes and their sha256, and (when asked for) the
    input statistics the prediction log records."""

    image: Image.Image
    data: bytes
    sha256: str
    stats: dict[str, float] | None = None


async def read_image(
    request: Request, max_body_bytes: int, max_image_pixels: int, decoding: Executor
) -> Image.Image:
    """The request's image, decoded to RGB on ``decoding``, or :class:`UploadError`."""
    return (await read_upload(request, max_body_bytes, max_image_pixels, decoding)).image


async def read_upload(
    request: Request,
    max_body_bytes: int,
    max_image_pixels: int,
    decoding: Executor,
    describe: bool = False,
) -> Upload:
    """The request's image with its bytes and sha256 (and its input statistics when
    ``describe``), all computed on ``decoding``, or :class:`UploadError`."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if not (media_type == MULTIPART or is_raw_image_type(media_type)):
        raise UploadError(
            415,
            f"Unsupported Content-Type '{media_type or '(none)'}': send the image bytes as "
            f"image/* or application/octet-stream, or one file in {MULTIPART}.",
        )
    body = await read_body(request, max_body_bytes)
    data = await file_from_form(request, body) if media_type == MULTIPART else body
    return await decode(data, max_image_pixels, decoding, describe)


def is_raw_image_type(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type == "application/octet-stream"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise UploadError(400, "Invalid Content-Length header.")
        if int(declared) > limit:
            raise UploadError(413, too_large(limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked body declares no length: stop at the limit
                raise UploadError(413, too_large(limit))
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise UploadError(400, "The client disconnected before the body was complete.") from exc
    return b"".join(chunks)


def too_large(limit: int) -> str:
    return f"Request body is larger than the limit of {limit} bytes."


async def file_from_form(request: Request, body: bytes) -> bytes:
    """The content of the one file part of a multipart body (already read, within the limit)."""
    replayed = Request(request.scope, receive=replay(body))
    try:
        async with replayed.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
            uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not uploads:
                raise UploadError(400, "The multipart body has no file part.", reason="no_file")
            return await uploads[0].read()
    except (HTTPException, MultiPartException) as exc:  # Starlette's verdict on a bad form
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise UploadError(400, f"Bad multipart body: {detail}", reason="bad_form") from exc


def replay(body: bytes):
    """An ASGI ``receive`` that hands over ``body`` once: lets Starlette parse a read body."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def decode(
    data: bytes, max_image_pixels: int, decoding: Executor, describe: bool = False
) -> Upload:
    """``open_image`` off the event loop; an empty upload is a 400, an unusable image a 422."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(decoding, _upload, data, max_image_pixels, describe)
    except ImageError as exc:
        status_code = 400 if exc.reason == "empty" else 422
        message = _BUFFER.sub("the upload", str(exc))  # Pillow names its buffer's address
        raise UploadError(status_code, message, reason=exc.reason) from exc


def _upload(data: bytes, max_image_pixels: int, describe: bool) -> Upload:
    image = open_image(data, max_image_pixels)
    digest = hashlib.sha256(data).hexdigest()  # hashlib lets go of the GIL for large inputs
    return Upload(image, data, digest, input_stats(image) if describe else None)
