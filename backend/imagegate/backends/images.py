"""Image bytes from a provider: what format they are, whether Pillow can read them, and
no more of them than were asked for.

Decided: a provider that answers more images than the request's ``n`` (an A1111 extension
appending its control maps, a server ignoring ``n``, a hostile one sending thousands) has
the first ``n`` kept and the rest dropped before anything decodes, downloads or stores
them; the first image's ``info["extra_images_dropped"]`` says how many, and the router notes
it in the attempt trail. The answer is not refused: the images asked for are there.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, TypeVar

from PIL import Image

from imagegate.backends.transport import error_text
from imagegate.errors import BackendError, BadResponse
from imagegate.logging import get_logger
from imagegate.models import GeneratedImage, ImageFormat

__all__ = [
    "DROPPED",
    "MAX_IMAGE_PIXELS",
    "asked_only",
    "check_image",
    "convert_image",
    "keep_asked",
    "sniff_format",
]

log = get_logger(__name__)
T = TypeVar("T")
DROPPED = "extra_images_dropped"  # the info key noting how many extra images were dropped

# Pillow refuses images above this many pixels (a decompression bomb), as bad_response.
MAX_IMAGE_PIXELS = 4096 * 4096

_MAGIC: tuple[tuple[bytes, ImageFormat], ...] = (
    (b"\x89PNG\r\n\x1a\n", ImageFormat.PNG),
    (b"\xff\xd8\xff", ImageFormat.JPEG),
)


def sniff_format(data: bytes) -> ImageFormat | None:
    """The image format from magic bytes (never trust a Content-Type)."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageFormat.WEBP
    return None


def keep_asked(items: Sequence[T], asked: int, *, backend: str) -> tuple[list[T], dict[str, Any]]:
    """The first ``asked`` of ``items``, and the info note for the first image when the
    provider sent more (see the module docstring)."""
    dropped = len(items) - asked
    if dropped <= 0:
        return list(items), {}
    log.warning("extra_images_dropped", backend=backend, asked=asked, answered=len(items))
    return list(items[:asked]), {DROPPED: dropped}


def asked_only(images: list[GeneratedImage], asked: int) -> tuple[list[GeneratedImage], str | None]:
    """At most ``asked`` of a backend's images, and the attempt trail's note when the
    provider answered more (dropped by the backend before decoding, or here)."""
    dropped = int(images[0].info.get(DROPPED) or 0) + max(0, len(images) - asked) if images else 0
    note = f"{dropped} extra images dropped (asked for {asked})" if dropped else None
    return images[:asked], note


def check_image(
    data: bytes, *, backend: str, seed: int | None = None, info: dict[str, Any] | None = None,
    quote: bool = True,
) -> GeneratedImage:
    """Verify ``data`` is a PNG/JPEG/WebP Pillow can read, and describe it.

    Reads the header and verifies the stream (CRCs for PNG) without a full pixel decode;
    refuses decompression bombs (more than MAX_IMAGE_PIXELS) as bad_response. The start of
    bytes that are no image is quoted in the message unless ``quote`` is false (bytes from
    a URL a provider named: what lives there is none of the caller's business).
    """
    fmt = sniff_format(data)
    if fmt is None:
        head = (error_text(data[:60]) if quote else f"{len(data)} bytes") if data else "empty body"
        raise BadResponse(f"response is not a PNG, JPEG or WebP image ({head})", backend=backend)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise BadResponse(
                    f"image of {width}x{height} pixels exceeds the decompression-bomb limit",
                    backend=backend,
                )
            img.verify()
    except BackendError:
        raise
    except Exception as exc:  # Pillow raises many types for a corrupt stream
        raise BadResponse(f"image does not decode: {type(exc).__name__}: {exc}", backend=backend) from exc
    return GeneratedImage(data=data, format=fmt, width=width, height=height, seed=seed, info=info or {})


_PIL_FORMATS = {ImageFormat.PNG: "PNG", ImageFormat.JPEG: "JPEG", ImageFormat.WEBP: "WEBP"}


def convert_image(image: GeneratedImage, fmt: ImageFormat) -> GeneratedImage:
    """``image`` re-encoded as ``fmt`` with Pillow (for a provider that cannot answer in it).

    PNG and WebP are written losslessly (the pixels the provider made, no second loss); JPEG
    at quality 95, with any alpha channel dropped. ``info["converted_from"]`` names the
    provider's format. The store embeds the generation parameters afterwards, as for any image.
    """
    if image.format is fmt:
        return image
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        pixels = img.convert("RGB") if fmt is ImageFormat.JPEG and img.mode not in ("RGB", "L") else img
        out = io.BytesIO()
        options: dict[str, Any] = {"quality": 95} if fmt is ImageFormat.JPEG else {}
        if fmt is ImageFormat.WEBP:
            options["lossless"] = True
        pixels.save(out, format=_PIL_FORMATS[fmt], **options)
    info = {**image.info, "converted_from": image.format.value}
    return image.model_copy(update={"data": out.getvalue(), "format": fmt, "info": info})
