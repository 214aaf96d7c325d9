"""The HTTP steps of a diagnosis: the backend's own probe (first response, status, time to
first byte), authentication (key accepted / rejected / absent, never the key itself), and one
small real generation.

Error kinds come from the backend's probe exactly as the router would see them; this module
only turns them into steps and advice codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from imagegate.backends.base import ImageBackend
from imagegate.backends.registry import REGISTRY
from imagegate.config import BackendSettings
from imagegate.diagnose.report import Step
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    GenerationTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    Unavailable,
)
from imagegate.models import Deadline, ImageRequest

__all__ = [
    "FirstResponse",
    "auth_step",
    "credentials",
    "generate_step",
    "http_step",
    "probe_step",
    "public_url",
]

DIAGNOSE_PROMPT = "a red circle on a white background"
_SHOW_LAST4_FROM = 12  # keys shorter than this show no characters at all


def public_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: safe to print."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class FirstResponse:
    """A TraceConfig recording the first HTTP response a session receives."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] | None = None
        self._start: float | None = None

    def reset(self) -> None:
        self.seen, self._start = None, None

    def trace_config(self) -> aiohttp.TraceConfig:
        async def start(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            if self._start is None:
                self._start = time.monotonic()

        async def end(session: Any, ctx: SimpleNamespace, params: Any) -> None:
            if self.seen is None and self._start is not None:
                self.seen = {
                    "method": params.method,
                    "url": public_url(str(params.url)),
                    "status": params.response.status,
                    "first_byte_s": round(time.monotonic() - self._start, 4),
                }

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(start)
        trace.on_request_end.append(end)
        return trace


def credentials(cfg: BackendSettings, secrets: Mapping[str, str]) -> list[dict[str, Any]]:
    """Which secret variables this backend reads, whether each is set, and at most the last
    4 characters of a key or token (never of a password or user name)."""
    out = []
    for purpose, env in cfg.secret_env_names().items():
        value = secrets.get(purpose) or ""
        show = purpose in ("api_key", "token") and len(value) >= _SHOW_LAST4_FROM
        out.append({"purpose": purpose, "env": env, "present": bool(value),
                    "last4": value[-4:] if show else None})
    return out


def env_names(creds: list[dict[str, Any]]) -> str:
    return " / ".join(c["env"] for c in creds) or "(no variable)"


def _ttfb(first: dict[str, Any]) -> str:
    return f"{first['method']} {urlsplit(first['url']).path or '/'} -> HTTP {first['status']} " \
        f"in {first['first_byte_s'] * 1000:.0f} ms"


def http_step(elapsed: float, first: dict[str, Any] | None, error: BackendError | None, detail: str = "") -> Step:
    """The first HTTP answer of a probe, judged by the probe's outcome."""
    data: dict[str, Any] = dict(first or {})
    if error is None:
        text = _ttfb(first) if first else "answered"
        return Step("http", "ok", elapsed, f"{text}; {detail}" if detail else text, data=data)
    data.update(error_kind=error.kind, error=str(error))
    status = data.get("status") or error.status
    if status is None:
        code = "http_timeout" if isinstance(error, TimeoutError) else "http_failed"
        code = "bad_response" if isinstance(error, BadResponse) else code
        return Step("http", "fail", elapsed, f"{error.kind}: {error}", code, data)
    data["status"] = status
    text = (_ttfb(first) if first else f"HTTP {status}") + ": " + str(error).removeprefix(f"HTTP {status}: ")
    if isinstance(error, AuthFailed):
        return Step("http", "ok", elapsed, text, data=data)
    for cls, status_word, code in (
        (QuotaExhausted, "fail", "quota_exhausted"),
        (RateLimited, "warn", "rate_limited"),
        (Unavailable, "warn", "unavailable"),
        (Rejected, "fail", "probe_rejected"),
        (BadResponse, "fail", "bad_response"),
    ):
        if isinstance(error, cls):
            return Step("http", status_word, elapsed, text, code, data)  # type: ignore[arg-type]
    return Step("http", "fail", elapsed, text, "server_error", data)


def auth_step(cfg: BackendSettings, creds: list[dict[str, Any]], *, answered: bool, error: BackendError | None) -> Step:
    """Credentials: accepted, rejected, absent (or not checked when nothing answered)."""
    envs = env_names(creds)
    present = [c for c in creds if c["present"]]
    missing = [c["env"] for c in creds if not c["present"] and c["purpose"] in cfg.required_secrets()]
    shown = ", ".join(c["env"] + (f" ...{c['last4']}" if c["last4"] else "") for c in present)
    data: dict[str, Any] = {"env": envs, "present": bool(present),
                            "last4": next((c["last4"] for c in present if c["last4"]), None)}
    if missing or (isinstance(error, AuthFailed) and not present):
        data.update(result="absent", env=" / ".join(missing) or envs)
        return Step("auth", "fail", None, f"no credentials: {data['env']} is not set", "auth_missing", data)
    if isinstance(error, AuthFailed):
        data.update(result="rejected", status=error.status)
        return Step("auth", "fail", None, f"rejected (HTTP {error.status}): {shown}", "auth_rejected", data)
    if not answered or (error is not None and not isinstance(error, QuotaExhausted)):
        why = "nothing answered" if not answered else "the probe failed before a verdict on the key"
        return Step("auth", "skip", None, f"not checked: {why}", data=data)
    if not present:
        data["result"] = "none"
        text = f"not set ({envs}); none were asked for" if creds else "none configured; none were asked for"
        return Step("auth", "ok", None, text, data=data)
    data["result"] = "accepted"
    return Step("auth", "ok", None, f"accepted: {shown}", data=data)


async def probe_step(backend: ImageBackend[Any], first: FirstResponse, timeout: float) -> tuple[Step, BackendError | None]:
    """Run the backend's own cheap probe; the http step and the error it raised (if any)."""
    first.reset()
    start = time.monotonic()
    detail, error = "", None
    try:
        async with asyncio.timeout(timeout + 1.0):  # the probe's deadline fires first
            detail = await backend._probe(Deadline.after(timeout), {})
    except BackendError as exc:
        error = exc
    except TimeoutError:
        error = GenerationTimeout(f"no answer within {timeout:g} s", backend=backend.name)
    except Exception as exc:  # noqa: BLE001 - a backend's bug must not end the diagnosis
        data = {"error": f"{type(exc).__name__}: {exc}"}
        return Step("http", "fail", time.monotonic() - start, data["error"], "internal_error", data), None
    return http_step(time.monotonic() - start, first.seen, error, detail), error


async def generate_step(backend: ImageBackend[Any], budget_s: float) -> Step:
    """One small real generation, bounded by ``budget_s``."""
    side = REGISTRY[backend.kind].smallest_side
    caps = backend.capabilities  # a provider whose sizes start higher (GLM-Image: 1024)
    for span in (caps.width, caps.height) if caps else ():
        if span is not None and span.min > side:
            side = int(span.min)
    request = ImageRequest(prompt=DIAGNOSE_PROMPT, width=side, height=side, n=1)
    start = time.monotonic()
    try:
        async with asyncio.timeout(budget_s + 1.0):
            images = await backend.generate(request, deadline=Deadline.after(budget_s))
    except (BackendError, TimeoutError) as exc:
        if not isinstance(exc, BackendError):
            exc = GenerationTimeout(f"no image within {budget_s:g} s", backend=backend.name)
        data: dict[str, Any] = {"error_kind": exc.kind, "error": str(exc), "width": side, "height": side}
        code = {"auth_failed": "auth_rejected", "quota_exhausted": "quota_exhausted",
                "rate_limited": "rate_limited"}.get(exc.kind, "generate_failed")
        return Step("generate", "fail", time.monotonic() - start, f"{exc.kind}: {exc}", code, data)
    except Exception as exc:  # noqa: BLE001 - a backend's bug must not end the diagnosis
        error = f"{type(exc).__name__}: {exc}"
        return Step("generate", "fail", time.monotonic() - start, error, "internal_error", {"error": error})
    elapsed = time.monotonic() - start
    img = images[0]
    data = {"width": img.width, "height": img.height, "format": img.format.value,
            "bytes": len(img.data), "seconds": round(elapsed, 3)}
    detail = f"{img.width}x{img.height} {img.format.value}, {len(img.data):,} bytes in {elapsed:.2f} s"
    return Step("generate", "ok", elapsed, detail, data=data)
