"""Writes images to ``outputs/YYYY-MM-DD/<time>-<id>.<ext>`` atomically, parameters embedded.

The generation parameters go where AUTOMATIC1111 puts them, so "PNG info" tools read them:
a PNG ``tEXt`` chunk named ``parameters`` (inserted into the provider's bytes, no re-encode);
for JPEG a COM segment with the same text; for WebP an EXIF ``UserComment`` ("UNICODE" +
UTF-16, as A1111's ``encode_pil_to_base64`` writes it with piexif), in an ``EXIF`` chunk added
to the RIFF container (a ``VP8X`` header is added when the file had none; the pixels are not
touched). A file only ever appears complete: bytes go to a temporary file in the same
directory, are flushed to disk, then renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import struct
import tempfile
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from imagegate.models import GeneratedImage, ImageFormat, ImageRequest

__all__ = ["ImageStore", "embed_parameters", "parameters_text"]

_EXT = {ImageFormat.PNG: "png", ImageFormat.JPEG: "jpg", ImageFormat.WEBP: "webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286  # the Exif IFD pointer and its UserComment tag
_VP8X_EXIF, _VP8X_ALPHA = 0x08, 0x10  # VP8X flags (WebP container spec)
STALE_AFTER_S = 60.0  # a temporary file this old belongs to no writer still running


def parameters_text(request: ImageRequest, image: GeneratedImage, backend: str) -> str:
    """The A1111 "infotext": prompt, ``Negative prompt:`` line, then ``Key: value`` pairs."""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    fields = [
        ("Steps", request.steps),
        ("Sampler", request.sampler),
        ("CFG scale", request.guidance_scale),
        ("Seed", image.seed),
        ("Size", f"{image.width}x{image.height}"),
        ("Model", request.model or image.info.get("model")),
        ("Backend", backend),
    ]
    lines.append(", ".join(f"{k}: {_clean(v)}" for k, v in fields if v is not None))
    return "\n".join(lines)


def _clean(value: object) -> str:
    return str(value).replace(",", " ").replace("\n", " ")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def embed_parameters(data: bytes, fmt: ImageFormat, text: str) -> bytes:
    """``data`` with ``text`` embedded as metadata, without re-encoding the pixels."""
    if fmt is ImageFormat.PNG and data.startswith(_PNG_SIGNATURE):
        # tEXt is Latin-1; iTXt carries UTF-8. A1111 writes tEXt when it can, iTXt otherwise.
        try:
            chunk = _png_chunk(b"tEXt", b"parameters\x00" + text.encode("latin-1"))
        except UnicodeEncodeError:
            chunk = _png_chunk(b"iTXt", b"parameters\x00\x00\x00\x00\x00" + text.encode("utf-8"))
        ihdr_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    if fmt is ImageFormat.JPEG and data.startswith(b"\xff\xd8"):
        comment = text.encode("utf-8")[:65000]
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]
    if fmt is ImageFormat.WEBP and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_with_exif(data, _user_comment(text))
    return data


def _user_comment(text: str) -> bytes:
    """A TIFF (EXIF) block whose Exif IFD holds ``text`` as a UNICODE UserComment."""
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = b"UNICODE\x00" + text.encode("utf-16-be")
    return exif.tobytes().removeprefix(b"Exif\x00\x00")


def _webp_with_exif(data: bytes, exif: bytes) -> bytes:
    """``data`` (a WebP) with an ``EXIF`` chunk; a simple file gets a ``VP8X`` header first."""
    body = data[12:]
    if body[:4] == b"VP8X":
        if body[8] & _VP8X_EXIF:
            return data  # it carries EXIF already: leave it as it is
        body = body[:8] + bytes([body[8] | _VP8X_EXIF]) + body[9:]
    elif body[:4] in (b"VP8 ", b"VP8L"):
        with Image.open(io.BytesIO(data)) as img:
            (w, h), alpha = img.size, img.mode == "RGBA"
        flags = _VP8X_EXIF | (_VP8X_ALPHA if alpha else 0)
        header = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        body = b"VP8X" + struct.pack("<I", len(header)) + header + body
    else:
        return data
    body += b"EXIF" + struct.pack("<I", len(exif)) + exif + b"\x00" * (len(exif) % 2)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


class ImageStore:
    """The output directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def problem(self, min_free_mb: float) -> str | None:
        """Why no image can be saved now (the folder cannot be written, or less than
        ``min_free_mb`` is free), else None. Writes and removes one empty probe file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".tmp-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            return f"output_dir {self.root} is not writable ({exc.strerror or type(exc).__name__})"
        free_mb = shutil.disk_usage(self.root).free / 2**20
        if free_mb < min_free_mb:
            return f"output_dir {self.root} has {free_mb:.0f} MB free, under min_free_mb = {min_free_mb:g}"
        return None

    def remove_stale(self, older_than_s: float = STALE_AFTER_S) -> int:
        """Remove temporary files a killed writer left (``.tmp-*`` older than ``older_than_s``,
        so that another process writing into the same folder now keeps its own); how many."""
        removed = 0
        limit = time.time() - older_than_s
        for leftover in [*self.root.glob(".tmp-*"), *self.root.glob("*/.tmp-*")]:
            with contextlib.suppress(OSError):
                if leftover.is_file() and leftover.stat().st_mtime < limit:
                    leftover.unlink()
                    removed += 1
        return removed

    def save(self, image: GeneratedImage, request: ImageRequest, *, backend: str) -> Path:
        """Write one image atomically and return its path."""
        now = datetime.now(UTC).astimezone()
        folder = self.root / now.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{now.strftime('%H%M%S')}-{secrets.token_hex(4)}.{_EXT[image.format]}"
        data = embed_parameters(image.data, image.format, parameters_text(request, image, backend))
        return write_atomic(folder / name, data)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that the file is either absent or complete."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path

