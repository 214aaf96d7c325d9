"""Stored images behind signed, expiring links (``url`` answers a browser can open), and the
retention sweep that deletes old ones.

A link is ``{base}/v1/files/{day}/{name}?expires={unix time}&sig={signature}``, where
``{day}/{name}`` is the file's path under ``output_dir`` as the ImageStore names it and the
signature is HMAC-SHA256 over ``"{day}/{name}\\n{expires}"`` with the server's URL secret
(URL-safe base64, no padding). It needs no header (the signature is the credential), works
after a restart and on every instance that shares the folder and the secret. The secret is
``IMAGEGATE_URL_SECRET``; without it, one is generated on first start and kept owner-only in
``$XDG_STATE_HOME/imagegate/url-secret`` (``~/.local/state/...``), outside the served folder.

Checked before the disk is touched: the path's shape (the store's own naming, nothing else),
then the signature (403 when it is missing, forged or altered), then the expiry (410).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from imagegate.errors import ConfigError
from imagegate.store import folder_entries

__all__ = [
    "SECRET_ENV",
    "SIGNED_FILE",
    "STORED",
    "UrlSigner",
    "default_state_dir",
    "expired_images",
    "sweep",
    "url_secret",
]

SECRET_ENV = "IMAGEGATE_URL_SECRET"
SIGNED_FILE = "signed_file"  # the route's name: the auth middleware lets it through
SECRET_FILE = "url-secret"
MIN_SECRET_CHARS = 16
# what ImageStore writes: YYYY-MM-DD/HHMMSS-<8 hex>.<ext>
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")  # a day folder, as the ImageStore names it
STORED = re.compile(rf"({_DAY.pattern})/(\d{{6}}-[0-9a-f]{{8}}\.(?:png|jpg|webp))")
_SIG = re.compile(r"[A-Za-z0-9_\-]{43}")
_EXPIRES = re.compile(r"[0-9]{1,12}")

Verdict = Literal["ok", "forged", "expired"]


class UrlSigner:
    """Signs and checks the query of a stored file's link."""

    def __init__(self, secret: bytes, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self._key = secret
        self.ttl_s = ttl_s
        self._clock = clock

    def _sig(self, relpath: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{relpath}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def query(self, relpath: str) -> str:
        """``expires=...&sig=...`` for ``relpath``, valid ``ttl_s`` from now."""
        expires = int(self._clock()) + self.ttl_s
        return f"expires={expires}&sig={self._sig(relpath, expires)}"

    def check(self, relpath: str, expires: str, sig: str) -> Verdict:
        """``ok``, ``forged`` (missing, malformed, or not ours) or ``expired``."""
        if not (_EXPIRES.fullmatch(expires) and _SIG.fullmatch(sig)):
            return "forged"
        if not hmac.compare_digest(sig, self._sig(relpath, int(expires))):
            return "forged"
        return "expired" if int(expires) < self._clock() else "ok"

    def seconds_left(self, expires: str) -> int:
        return max(0, int(expires) - int(self._clock()))


def default_state_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/imagegate``, else ``~/.local/state/imagegate`` (XDG Base Directory)."""
    base = env.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base else Path(env.get("HOME") or Path.home()) / ".local" / "state"
    return root / "imagegate"


def url_secret(given: str | None, state_dir: Path, served: Path) -> bytes:
    """``given`` (``IMAGEGATE_URL_SECRET``), else the state file's secret (made on first start)."""
    given = (given or "").strip()
    if given:
        if len(given) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"environment variable {SECRET_ENV}: must be at least {MIN_SECRET_CHARS} "
                f"characters (got {len(given)})"
            )
        return given.encode()
    if state_dir.resolve().is_relative_to(served.resolve()):
        raise ConfigError(
            f"the URL secret's folder {state_dir} is inside the served folder {served}: "
            f"set XDG_STATE_HOME elsewhere, or set {SECRET_ENV}"
        )
    return _state_file_secret(state_dir / SECRET_FILE)


def _state_file_secret(path: Path) -> bytes:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: the URL secret is readable by others: chmod 600 {path}")
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot keep the URL secret there ({exc.strerror or exc}); "
            f"set {SECRET_ENV} or XDG_STATE_HOME"
        ) from None
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"{path}: the URL secret is too short: delete the file to make a new one")
    return secret.encode()


def expired_images(root: Path, *, now: float, max_age_s: float) -> list[Path]:
    """The stored images under ``root`` last written more than ``max_age_s`` ago (only files
    named as the ImageStore names them: nothing else in the folder is touched)."""
    old: list[Path] = []
    days = [Path(e.path) for e in folder_entries(root) if _DAY.fullmatch(e.name)]
    for day in days:  # another instance sharing the folder may remove one meanwhile
        for entry in folder_entries(day):
            if STORED.fullmatch(f"{day.name}/{entry.name}"):
                with contextlib.suppress(OSError):
                    if entry.is_file() and now - entry.stat().st_mtime > max_age_s:
                        old.append(Path(entry.path))
    return old


def sweep(root: Path, *, now: float, max_age_s: float) -> int:
    """Delete the expired images (and day folders left empty); how many were deleted."""
    deleted = 0
    for path in expired_images(root, now=now, max_age_s=max_age_s):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted += 1
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.parent.rmdir()
    return deleted
