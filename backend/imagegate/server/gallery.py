"""The operator page's gallery: the newest images of the output folder, with their parameters.

Only files named as the :class:`~imagegate.store.ImageStore` names them
(``YYYY-MM-DD/HHMMSS-<8 hex>.<ext>``, ``files.STORED``) and that are regular files (not
symlinks) are listed; nothing from the request names a file: the cursor ``before``
(``{mtime_ns}:{day}/{name}``, a page's ``next``) is checked against the same pattern and only
compared with what was read from the disk. Newest first, by modification time (the save
time), then name. Each image's parameters are read back
from its bytes (``store.read_parameters``) once per version of the file (an LRU keyed by
name, size and mtime).
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagegate.server.files import STORED
from imagegate.store import parse_parameters, read_parameters

__all__ = ["CURSOR", "MAX_LIMIT", "Gallery", "GalleryPage", "cursor", "newest", "parse_cursor"]

MAX_LIMIT = 100
MAX_READ_BYTES = 64 * 1024 * 1024  # larger files are listed without their parameters
CACHE_ENTRIES = 1024
_DAY_LEN = len("YYYY-MM-DD")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")  # the store's day folders (files.STORED's first part)
CURSOR = re.compile(r"([0-9]{1,20}):(" + STORED.pattern + ")")


@dataclass(frozen=True)
class GalleryPage:
    items: list[dict[str, Any]]
    next: str | None  # the ``before`` of the next page, or None at the end


def cursor(relpath: str, st: os.stat_result) -> str:
    """Where a page ends: ``{mtime_ns}:{day}/{name}``."""
    return f"{st.st_mtime_ns}:{relpath}"


def parse_cursor(text: str) -> tuple[int, str] | None:
    """``(mtime_ns, relpath)`` of a cursor, or None when it is not one."""
    found = CURSOR.fullmatch(text)
    return (int(found[1]), found[2]) if found else None


def newest(
    root: Path, *, limit: int, before: tuple[int, str] | None = None
) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """Up to ``limit`` stored images under ``root`` (``day/name`` and its stat), newest first
    (by modification time, then name), all after the cursor ``before`` when given; and
    whether more remain."""
    found: list[tuple[str, os.stat_result]] = []
    try:
        days = sorted((d for d in os.listdir(root) if _DAY.fullmatch(d)), reverse=True)
    except OSError:
        return [], False
    for day in days:
        if before is not None and day > before[1][:_DAY_LEN]:
            continue
        for key, relpath, st in _day(root, day):
            if before is not None and key >= before:
                continue
            if len(found) == limit:
                return found, True
            found.append((relpath, st))
    return found, False


def _day(root: Path, day: str) -> list[tuple[tuple[int, str], str, os.stat_result]]:
    """The regular files of one day folder named as the store names them, newest first."""
    folder = root / day
    if folder.is_symlink() or not folder.is_dir():
        return []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    rows = []
    for name in names:
        relpath = f"{day}/{name}"
        if not STORED.fullmatch(relpath):
            continue
        try:
            st = os.lstat(folder / name)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            rows.append(((st.st_mtime_ns, relpath), relpath, st))
    rows.sort(key=lambda row: row[0], reverse=True)
    return rows


class Gallery:
    """Pages of the output folder, each image with its parameters."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: OrderedDict[tuple[str, int, int], dict[str, Any]] = OrderedDict()

    def page(self, *, limit: int, before: tuple[int, str] | None = None) -> GalleryPage:
        """Blocking (reads the disk): run it in a thread."""
        found, more = newest(self.root, limit=limit, before=before)
        items = [self._item(relpath, st) for relpath, st in found]
        return GalleryPage(items, cursor(*found[-1]) if more and found else None)

    def _item(self, relpath: str, st: os.stat_result) -> dict[str, Any]:
        path = self.root / relpath
        key = (relpath, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._read(path, relpath, st)
            self._cache[key] = cached
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return cached

    def _read(self, path: Path, relpath: str, st: os.stat_result) -> dict[str, Any]:
        text = None
        if st.st_size <= MAX_READ_BYTES:
            try:
                text = read_parameters(_read_regular(path))
            except OSError:  # deleted meanwhile, or no longer a regular file
                text = None
        empty: dict[str, Any] = {"prompt": "", "negative_prompt": "", "fields": {}}
        parsed = parse_parameters(text) if text else empty
        fields = parsed["fields"]
        adjustments = [a.strip() for a in fields.get("Adjustments", "").split(";") if a.strip()]
        return {
            "path": relpath, "time": st.st_mtime, "bytes": st.st_size, "parameters": text,
            "prompt": parsed["prompt"], "negative_prompt": parsed["negative_prompt"],
            "fields": fields, "backend": fields.get("Backend"), "adjustments": adjustments,
        }


def _read_regular(path: Path) -> bytes:
    """The file's bytes, refusing a symlink swapped in since it was listed (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(MAX_READ_BYTES + 1)
