"""The one redactor: every configured secret masked, in every form a server may echo it.

A provider that refuses a key often quotes it back (``Incorrect API key provided: sk-...``),
and not always as it was sent: the value of an ``Authorization`` header, the token alone,
URL-encoded (``%2B`` for ``+``, in either case), JSON-escaped, or, for HTTP Basic, the
base64 of ``user:password``. A :class:`Redactor` knows each secret in all of these forms and
masks any of them, and the tail of a string cut off in the middle of one (``sk-abc12...``, as
a message shortened to a limit ends), with ``***``.

One class serves every exit: a backend masks what a provider sends before reading it
(``Redactor.for_secrets(its own secrets)``); the router masks every error and health text
that leaves a backend, the HTTP server every answer and the diagnosis its whole report
(``Redactor.for_settings(settings)``: every backend's secrets, plus the server's own keys).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from imagegate.errors import ImageGateError

__all__ = ["MASK", "Redactor"]

MASK = "***"
MIN_SECRET = 4  # shorter values (a user name "ai") would mask ordinary words
_MIN_TAIL = 8  # a cut-off secret is masked once this many of its characters show
_PERCENT = re.compile(r"%[0-9A-F]{2}")


def forms(secret: str) -> set[str]:
    """``secret`` as a server may quote it: raw, URL-encoded (both cases), JSON-escaped."""
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    lower = {_PERCENT.sub(lambda m: m.group(0).lower(), e) for e in encoded}
    return {secret, json.dumps(secret)[1:-1], *encoded, *lower}


def basic_token(user: str, password: str) -> str:
    """What an HTTP Basic ``Authorization`` header carries for ``user:password``."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Redactor:
    """Masks every configured secret, in every form, in texts, bytes and JSON documents."""

    def __init__(self, secrets: Iterable[str] = (), *, pairs: Iterable[tuple[str, str]] = ()) -> None:
        needles: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= MIN_SECRET:
                needles |= forms(secret)
        for user, password in pairs:
            if user:
                needles.add(basic_token(user, password))
        # longest first, so that a secret containing another is masked whole
        self._needles = sorted(needles, key=len, reverse=True)
        self._raw = [n.encode() for n in self._needles]

    @classmethod
    def for_secrets(cls, secrets: Mapping[str, str], extra: Iterable[str] = ()) -> Redactor:
        """One backend's secrets (``{purpose: value}``); ``username`` + ``password`` also
        as the Basic token they make."""
        pairs = []
        if secrets.get("username"):
            pairs.append((secrets["username"], secrets.get("password") or ""))
        return cls([*secrets.values(), *extra], pairs=pairs)

    @classmethod
    def for_settings(cls, secrets: Mapping[str, Mapping[str, str]], extra: Iterable[str] = ()) -> Redactor:
        """Every backend's secrets (``Settings.secrets``), plus ``extra`` (the server's keys)."""
        values = [v for per in secrets.values() for v in per.values()]
        pairs = [
            (per["username"], per.get("password") or "") for per in secrets.values() if per.get("username")
        ]
        return cls([*values, *extra], pairs=pairs)

    def __bool__(self) -> bool:
        return bool(self._needles)

    def __call__(self, text: str | None) -> str | None:
        """``text`` with every secret masked (None and "" pass through)."""
        if not text or not self._needles:
            return text
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return self._cut_tail(text)

    def text(self, text: str) -> str:
        return self(text) or text

    def bytes(self, body: bytes) -> bytes:
        """``body`` with every secret masked (a provider's answer, before it is read)."""
        for needle in self._raw:
            if needle in body:
                body = body.replace(needle, MASK.encode())
        return body

    def value(self, value: Any) -> Any:
        """A JSON-like document with every string in it masked (keys too)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def error(self, exc: ImageGateError) -> ImageGateError:
        """``exc`` with its message masked (in place; returned for ``raise``)."""
        exc.message = self.text(exc.message)
        return exc

    def _cut_tail(self, text: str) -> str:
        """Mask the start of a secret where a text was cut off in it (at the end, or before
        an ellipsis)."""
        for needle in self._needles:
            for end in ("...", "…", ""):
                for size in range(len(needle) - 1, _MIN_TAIL - 1, -1):
                    head = needle[:size] + end
                    if (text.endswith(head) if not end else head in text):
                        text = text.replace(head, MASK + end) if end else text[: -size] + MASK
                        break
        return text
