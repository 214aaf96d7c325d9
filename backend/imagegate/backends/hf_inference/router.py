"""The router's error answers, read the same way for every provider (pure).

The router answers its own errors as ``{"error": "..."}`` with ``X-Error-Code`` /
``X-Error-Message`` headers (``/work/shared/providers.md`` §4; huggingface_hub's
``hf_raise_for_status`` reads the same places: ``utils/_http.py``), and passes a provider's
error through in the provider's shape. :func:`error_message` finds the text in any of them:
``error`` (a string, a list, or ``{"message"}`` as Together, Nscale and Z.ai answer),
``detail`` (a string as Replicate answers, or fal's list of ``{"msg"}``), ``message``
(WaveSpeed), ``title``, then the header, then the body's text.

:func:`error_from_response`:

- 402, or ``X-Error-Code: NOT_ENOUGH_BALANCE`` -> quota_exhausted (no credit left; Free
  accounts have no pay-as-you-go, and PAYG is disabled for providers outside HF billing:
  hub-docs ``inference-providers/pricing.md``);
- 404 -> rejected, naming the model and provider ("Not Found" for hf-inference; "Model not
  supported by provider ..." elsewhere, a third-party quote: UNCONFIRMED wording);
- 410 -> rejected with the advice to use the router (the retired host);
- 503 -> unavailable, ``Retry-After`` else the body's ``estimated_time``;
- anything else as :func:`error_for_status` (401/403 auth_failed, 429 rate_limited, 5xx ...),
  after the provider's own hook had its say (a content filter, a credit message).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from imagegate.backends.hf_inference.wire import Provider
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.errors import BackendError, QuotaExhausted, Rejected, Unavailable

__all__ = ["PUBLIC_HUB", "PUBLIC_ROUTER_HOST", "error_from_response", "error_message", "hub_base"]

PUBLIC_ROUTER_HOST = "router.huggingface.co"
PUBLIC_HUB = "https://huggingface.co"


def hub_base(base_url: str) -> str:
    """The Hub for this router: ``https://huggingface.co`` behind the public router, else
    ``base_url`` itself (an emulator or a mirror serves both)."""
    return PUBLIC_HUB if urlsplit(base_url).hostname == PUBLIC_ROUTER_HOST else base_url


def _text_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        return _text_of(value.get("message") or value.get("msg"))
    if isinstance(value, list):
        parts = [t for t in (_text_of(v) for v in value) if t]
        return "; ".join(parts) or None
    return None


def error_message(body: bytes, headers: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The error's text and the parsed JSON body (empty when not a JSON object)."""
    doc: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            doc = parsed
    except ValueError:
        pass
    found = None
    for key in ("error", "detail", "message", "title"):
        found = _text_of(doc.get(key))
        if found:
            break
    text = found or headers.get("X-Error-Message") or error_text(body) or "no detail"
    return error_text(text), doc


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str], *, backend: str, model: str,
    provider: Provider | None = None,
) -> BackendError:
    """The taxonomy's error for a non-200 answer from the router (pure)."""
    name = provider.name if provider else "hf-inference"
    message, doc = error_message(body, headers)
    if provider is not None and provider.error is not None:
        special = provider.error(status, doc, message, backend)
        if special is not None:
            return special
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 402 or headers.get("X-Error-Code") == "NOT_ENOUGH_BALANCE":
        return QuotaExhausted(f"no inference credit left: {message}", backend=backend, status=status)
    if status == 404:
        return Rejected(f"model {model!r} is not served by {name}: {message}", backend=backend, status=404)
    if status == 410:
        return Rejected(
            f"this host is retired (410 Gone: {message}); set base_url = "
            f"\"https://{PUBLIC_ROUTER_HOST}\"",
            backend=backend,
            status=410,
        )
    if status == 503:
        estimated = doc.get("estimated_time")
        if retry_after is None and isinstance(estimated, int | float) and not isinstance(estimated, bool):
            retry_after = max(0.0, float(estimated))
        return Unavailable(message, backend=backend, status=503, retry_after=retry_after)
    return error_for_status(status, message, backend=backend, retry_after=retry_after)
