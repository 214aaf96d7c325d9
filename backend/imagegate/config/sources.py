"""Where settings come from: the environment with the one ``.env`` reader, and TOML files.

Every failure becomes a :class:`~imagegate.errors.ConfigError` naming the file (or
variable), never a traceback.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import ValidationError

from imagegate.errors import ConfigError

__all__ = ["environment", "errors_text", "read_toml"]


def environment(environ: dict[str, str] | None = None, *, dotenv: bool = True) -> dict[str, str]:
    """``environ`` as given, else the process environment with ``./.env`` filling the gaps
    (a variable already set wins over the file)."""
    if environ is not None:
        return dict(environ)
    env = dict(os.environ)
    if dotenv:
        try:
            values = dotenv_values(".env")
        except UnicodeDecodeError as exc:
            raise ConfigError(f".env: {_not_utf8(exc)}") from None
        for key, value in values.items():
            if value is not None:
                env.setdefault(key, value)
    return env


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_not_utf8(exc)}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (4300)
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"the file is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


def errors_text(exc: ValidationError) -> str:
    """One "key 'x': problem" clause per validation error."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(table)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        parts.append(f"key {loc!r}: {msg}")
    return "; ".join(parts)
