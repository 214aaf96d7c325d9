"""Real image bytes for emulators: deterministic in prompt and seed, any size, PNG/JPEG/WebP."""

from __future__ import annotations

import hashlib
import io
from functools import lru_cache

from PIL import Image, ImageDraw

__all__ = ["make_image"]

_PIL_FORMAT = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}


@lru_cache(maxsize=64)
def make_image(width: int, height: int, prompt: str = "", seed: int = 0, fmt: str = "png") -> bytes:
    """An image whose pixels depend on ``prompt`` and ``seed`` (same inputs, same bytes)."""
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    img = Image.new("RGB", (width, height), tuple(digest[0:3]))
    draw = ImageDraw.Draw(img)
    for i in range(4):
        b = digest[3 + i * 7 : 10 + i * 7]
        x0, y0 = b[0] * width // 256, b[1] * height // 256
        x1, y1 = x0 + (b[2] * width // 512) + 1, y0 + (b[3] * height // 512) + 1
        draw.rectangle((x0, y0, x1, y1), fill=(b[4], b[5], b[6]))
    out = io.BytesIO()
    pil_format = _PIL_FORMAT[fmt.lower()]
    options = {"compress_level": 1} if pil_format == "PNG" else {"quality": 85}
    img.save(out, format=pil_format, **options)
    return out.getvalue()
