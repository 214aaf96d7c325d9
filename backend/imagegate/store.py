"""Writes images to ``outputs/YYYY-MM-DD/<time>-<id>.<ext>`` atomically, parameters embedded.

The generation parameters go where AUTOMATIC1111 puts them, so "PNG info" tools read them:
a PNG ``tEXt`` chunk named ``parameters`` (inserted into the provider's bytes, no re-encode);
for JPEG a COM segment with the same text; for WebP an EXIF ``UserComment`` ("UNICODE" +
UTF-16, as A1111's ``encode_pil_to_base64`` writes it with piexif), in an ``EXIF`` chunk added
to the RIFF container (a ``VP8X`` header is added when the file had none; the pixels are not
touched). A file only ever appears complete: bytes go to a temporary file in the same
directory, are flushed to disk, then renamed into place.

Read back (the operator page's gallery): :func:`read_parameters` finds that text in a file's
bytes (the PNG text chunks, a JPEG comment or EXIF, a WebP EXIF chunk: ours and A1111's) and
:func:`parse_parameters` splits it the way A1111's "PNG info" does.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import struct
import tempfile
import time
import warnings
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from imagegate.models import GeneratedImage, ImageFormat, ImageRequest

__all__ = [
    "ImageStore", "embed_parameters", "folder_entries", "parameters_text", "parse_parameters",
    "read_parameters",
]

_EXT = {ImageFormat.PNG: "png", ImageFormat.JPEG: "jpg", ImageFormat.WEBP: "webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286  # the Exif IFD pointer and its UserComment tag
_VP8X_EXIF, _VP8X_ALPHA = 0x08, 0x10  # VP8X flags (WebP container spec)
STALE_AFTER_S = 60.0  # a temporary file this old belongs to no writer still running


def parameters_text(
    request: ImageRequest, image: GeneratedImage, backend: str, adjustments: Sequence[str] = ()
) -> str:
    """The A1111 "infotext": prompt, ``Negative prompt:`` line, then ``Key: value`` pairs
    (``Adjustments``: what was changed to fit the backend, quoted as A1111 quotes a value)."""
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
    pairs = [f"{k}: {_clean(v)}" for k, v in fields if v is not None]
    if adjustments:
        pairs.append(f"Adjustments: {_quote('; '.join(adjustments))}")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _quote(text: str) -> str:
    """A1111 ``infotext_utils.quote``: JSON-quoted when it holds a comma, colon or newline."""
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


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
        top = folder_entries(self.root)
        days = [Path(e.path) for e in top if e.is_dir(follow_symlinks=False)]
        for entry in [*top, *(e for day in days for e in folder_entries(day))]:
            if not entry.name.startswith(".tmp-"):
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def save(
        self, image: GeneratedImage, request: ImageRequest, *, backend: str,
        adjustments: Sequence[str] = (),
    ) -> Path:
        """Write one image atomically and return its path (``adjustments``: their short form)."""
        now = datetime.now(UTC).astimezone()
        folder = self.root / now.strftime("%Y-%m-%d")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{now.strftime('%H%M%S')}-{secrets.token_hex(4)}.{_EXT[image.format]}"
        text = parameters_text(request, image, backend, adjustments)
        data = embed_parameters(image.data, image.format, text)
        return write_atomic(folder / name, data)


def folder_entries(folder: Path) -> list[os.DirEntry[str]]:
    """What ``folder`` holds; nothing if it is gone or unreadable. The retention sweep removes
    emptied day folders while other code lists them (at start, both run at once), and
    ``Path.glob`` raises FileNotFoundError for a folder removed under it."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


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



# -- reading the parameters back ----------------------------------------------------------

_PARAMETERS = b"parameters"
# A1111 modules/infotext_utils.py (re_param_code): "Key: value" pairs, values maybe quoted
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def read_parameters(data: bytes) -> str | None:
    """The embedded generation parameters of an image file (PNG ``parameters`` tEXt, iTXt or
    zTXt; JPEG comment or EXIF UserComment; WebP EXIF UserComment), or None. Pure, and never
    raises on a malformed file."""
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png_parameters(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg_parameters(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_parameters(data)
    except (ValueError, IndexError, struct.error, zlib.error, UnicodeDecodeError):
        return None
    return None


def _png_parameters(data: bytes) -> str | None:
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        key, _, rest = body.partition(b"\x00")
        if key != _PARAMETERS:
            if kind == b"IEND":
                return None
            continue
        if kind == b"tEXt":
            return rest.decode("latin-1")
        if kind == b"zTXt":  # compression method byte, then zlib
            return zlib.decompress(rest[1:]).decode("latin-1")
        if kind == b"iTXt":  # flag, method, language\0, translated keyword\0, text
            flag, text = rest[0], rest[2:].split(b"\x00", 2)[-1]
            return (zlib.decompress(text) if flag else text).decode("utf-8")
    return None


def _jpeg_parameters(data: bytes) -> str | None:
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: no metadata after it
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if marker == 0xFE:  # COM (ours)
            return body.decode("utf-8", errors="replace")
        if marker == 0xE1 and body.startswith(b"Exif\x00\x00"):  # APP1 (A1111, piexif)
            found = _exif_comment(body[6:])
            if found is not None:
                return found
    return None


def _webp_parameters(data: bytes) -> str | None:
    pos = 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if kind == b"EXIF":
            return _exif_comment(data[pos + 8:pos + 8 + size].removeprefix(b"Exif\x00\x00"))
        pos += 8 + size + (size % 2)
    return None


def _exif_comment(tiff: bytes) -> str | None:
    """The Exif IFD's UserComment: "UNICODE\\0" + UTF-16 (big-endian, as piexif writes it
    and A1111 reads it), or "ASCII\\0\\0\\0" + text."""
    exif = Image.Exif()
    try:  # Pillow's TIFF reader raises SyntaxError, among others, on a damaged block
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data", "truncated" ...
            exif.load(b"Exif\x00\x00" + tiff)
            comment: Any = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError, EOFError, struct.error):
        return None
    if not isinstance(comment, bytes):
        return comment if isinstance(comment, str) else None
    head, body = comment[:8], comment[8:]
    if head == b"UNICODE\x00":
        return body.decode("utf-16-be")
    return body.decode("utf-8", errors="replace").rstrip("\x00")


def parse_parameters(text: str) -> dict[str, Any]:
    """``{"prompt", "negative_prompt", "fields": {key: value}}`` from an infotext, the way
    A1111's ``parse_generation_parameters`` reads it: the last line holds the ``Key: value``
    pairs when it has at least three; a ``Negative prompt:`` line and what follows it is the
    negative prompt; quoted values are unquoted."""
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        if line.startswith("Negative prompt:"):
            negative.append(line[len("Negative prompt:"):].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    fields: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(last):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            with contextlib.suppress(ValueError):
                value = str(json.loads(value))
        fields[key.strip()] = value
    return {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative), "fields": fields}
