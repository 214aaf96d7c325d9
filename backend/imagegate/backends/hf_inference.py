"""Hugging Face Inference through the router, ``hf-inference`` provider.

Wire (huggingface_hub 2.4 ``InferenceClient.text_to_image`` with ``provider="hf-inference"``):

- ``POST {base_url}/hf-inference/models/{model}``; ``base_url`` defaults to
  ``https://router.huggingface.co``. The old ``api-inference.huggingface.co`` host answers
  410 Gone; config refuses it, and a 410 from anywhere is ``rejected`` with that advice.
- Headers ``Authorization: Bearer <HF_TOKEN>``, ``Accept: image/png``; JSON body
  ``{"inputs": prompt, "parameters": {negative_prompt, width, height, num_inference_steps,
  guidance_scale, seed}}`` with unset values left out.
- 200: the body is the raw image. The Content-Type is not trusted (it says ``image/jpeg``
  for PNG bytes at times): the bytes are sniffed and verified, and capped at
  ``max_image_bytes``.
- Errors are ``{"error": "..."}`` (plain text "Not Found" for an unknown model) with
  ``X-Error-Code`` / ``X-Error-Message`` headers: 402 or ``X-Error-Code: NOT_ENOUGH_BALANCE``
  -> quota_exhausted; 404 -> rejected (model not served); 410 -> rejected (retired host);
  503 ``{"error", "estimated_time": s}`` -> unavailable with retry_after = Retry-After, else
  estimated_time; 429 -> rate_limited; others as :func:`error_for_status`.

Decided:

- A seed is always sent. With none given, one is drawn here, so every image reports the
  seed that made it, and ``n`` identical payloads cannot be answered from the provider's
  response cache with one image ``n`` times. ``n > 1`` becomes ``n`` concurrent calls with
  seeds ``seed, seed+1, ...`` (one TaskGroup: the first failure cancels the others).
- An empty ``negative_prompt`` is left out, like ``None`` (hf_hub does the same).
- ``output_format`` is not sent (hf-inference has no such parameter): the image comes back
  in the format the provider chose, PNG in practice; the router converts it when another
  format was asked (an adjustment on the result).
- Probe: ``GET {hub}/api/models/{model}?expand=inferenceProviderMapping`` with the token,
  the form huggingface_hub's own ``model_info(expand=[...])`` sends (the JS client sends
  ``expand[]=``; that the Hub answers both is presumed, UNCONFIRMED).
  It spends no credit, a bad token gets 401, and it says whether hf-inference serves the
  model at all. ``/api/whoami-v2`` is not the default because the Hub rate-limits it
  "intentionally strict" (huggingface_hub's own words) and the probe runs every few seconds.
  ``{hub}`` is ``https://huggingface.co`` when ``base_url`` is the public router, else
  ``base_url`` itself, so pointing ``base_url`` at an emulator points the probe there too.
  Setting ``whoami_url`` (e.g. ``https://huggingface.co/api/whoami-v2``) probes that URL
  instead: any 200 means the token works.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import field_validator

from imagegate.backends.http import Answer, HttpBackend, gather_all
from imagegate.backends.images import check_image
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities
from imagegate.config import HttpBackendSettings, check_url
from imagegate.errors import BackendError, QuotaExhausted, Rejected, Unavailable
from imagegate.models import MAX_SEED, Deadline, GeneratedImage, ImageRequest

__all__ = [
    "CAPABILITIES",
    "HFInferenceBackend",
    "HFInferenceSettings",
    "build_request",
    "error_from_response",
    "from_env",
    "probe_url",
]

_PUBLIC_ROUTER_HOST = "router.huggingface.co"
_PUBLIC_HUB = "https://huggingface.co"
_DEFAULT_MODEL = "black-forest-labs/FLUX.1-schnell"
_PROVIDER = "hf-inference"
_PROBE_CAP = 1024 * 1024
# InferenceClient.text_to_image's parameters (huggingface_hub 2.4): negative_prompt, width,
# height, num_inference_steps, guidance_scale, seed (and scheduler, which is not a sampler
# name); no count (one image per call); the answer is the image itself, PNG as asked by
# ``Accept: image/png``. Ranges depend on the model and are not published: none here.
CAPABILITIES = Capabilities(
    source="built-in: hf-inference text-to-image (huggingface_hub 2.4 InferenceClient)",
    takes=("negative_prompt", "size", "steps", "guidance_scale", "seed", "model"),
    formats=("png",),
)


class HFInferenceSettings(HttpBackendSettings):
    """Hugging Face Inference through the router (hf-inference provider)."""

    kind: Literal["hf_inference"] = "hf_inference"
    base_url: str = "https://router.huggingface.co"
    model: str | None = _DEFAULT_MODEL
    api_key_env: str = "HF_TOKEN"
    whoami_url: str | None = None

    _whoami = field_validator("whoami_url")(classmethod(lambda cls, v: check_url(v)))

    @field_validator("base_url")
    @classmethod
    def _not_retired_host(cls, value: str) -> str:
        if urlsplit(value).hostname == "api-inference.huggingface.co":
            raise ValueError(
                "api-inference.huggingface.co is retired (it answers 410 Gone); "
                "use https://router.huggingface.co"
            )
        return value

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``HF_TOKEN`` configures HF Inference (priority 30)."""
    if not env.get("HF_TOKEN"):
        return []
    return [{"name": "hf-inference", "kind": "hf_inference", "priority": 30}]


def build_request(request: ImageRequest, *, seed: int) -> dict[str, Any]:
    """The JSON body for one image with ``seed`` (pure)."""
    parameters = {
        "negative_prompt": request.negative_prompt or None,
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "seed": seed,
    }
    return {"inputs": request.prompt, "parameters": {k: v for k, v in parameters.items() if v is not None}}


def generation_url(base_url: str, model: str) -> str:
    return f"{base_url}/{_PROVIDER}/models/{quote(model, safe='/')}"


def probe_url(base_url: str, model: str, whoami_url: str | None) -> str:
    """The URL the probe GETs (see the module docstring)."""
    if whoami_url:
        return whoami_url
    hub = _PUBLIC_HUB if urlsplit(base_url).hostname == _PUBLIC_ROUTER_HOST else base_url
    return f"{hub}/api/models/{quote(model, safe='/')}?expand=inferenceProviderMapping"


def _error_message(body: bytes, headers: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The provider's error text and the parsed JSON body (empty when not JSON)."""
    doc: dict[str, Any] = {}
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            doc = parsed
    except ValueError:
        pass
    error = doc.get("error")
    if isinstance(error, list):
        error = "; ".join(str(e) for e in error)
    text = str(error) if error else headers.get("X-Error-Message") or error_text(body) or "no detail"
    return error_text(text), doc


def error_from_response(
    status: int, body: bytes, headers: Mapping[str, str], *, backend: str, model: str
) -> BackendError:
    """The taxonomy's error for a non-200 answer from the router (pure)."""
    message, doc = _error_message(body, headers)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if status == 402 or headers.get("X-Error-Code") == "NOT_ENOUGH_BALANCE":
        return QuotaExhausted(f"no inference credit left: {message}", backend=backend, status=status)
    if status == 404:
        return Rejected(f"model {model!r} is not served by {_PROVIDER}: {message}", backend=backend, status=404)
    if status == 410:
        return Rejected(
            f"this host is retired (410 Gone: {message}); set base_url = "
            f"\"https://{_PUBLIC_ROUTER_HOST}\"",
            backend=backend,
            status=410,
        )
    if status == 503:
        estimated = doc.get("estimated_time")
        if retry_after is None and isinstance(estimated, int | float) and not isinstance(estimated, bool):
            retry_after = max(0.0, float(estimated))
        return Unavailable(message, backend=backend, status=503, retry_after=retry_after)
    return error_for_status(status, message, backend=backend, retry_after=retry_after)


def probe_detail(body: Any, *, backend: str, model: str, whoami: bool) -> str:
    """What a 200 probe answer says; raises when hf-inference does not serve the model (pure)."""
    if whoami:
        name = body.get("name") if isinstance(body, dict) else None
        return f"token accepted (user {name})" if name else "token accepted"
    mapping = body.get("inferenceProviderMapping") if isinstance(body, dict) else None
    if isinstance(mapping, list):  # list_models shape: [{"provider": ..., "status": ...}]
        mapping = {m.get("provider"): m for m in mapping if isinstance(m, dict)}
    if not isinstance(mapping, dict):
        return f"token accepted; model {model} exists"
    entry = mapping.get(_PROVIDER)
    if not isinstance(entry, dict):
        others = ", ".join(sorted(str(k) for k in mapping)) or "none"
        raise Rejected(f"model {model!r} is not served by {_PROVIDER} (providers: {others})", backend=backend)
    status = entry.get("status", "unknown")
    if status == "error":
        raise Unavailable(f"{_PROVIDER} reports model {model!r} in error", backend=backend)
    return f"{_PROVIDER} serves {model} ({status})"



class HFInferenceBackend(HttpBackend[HFInferenceSettings]):
    """Hugging Face Inference (router, hf-inference provider)."""

    kind = "hf_inference"

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def _model(self, request: ImageRequest) -> str:
        return request.model or self.settings.model or _DEFAULT_MODEL

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        model = self._model(request)
        base_seed = request.seed if request.seed is not None else random.randrange(MAX_SEED - 8)
        seeds = [(base_seed + i) % (MAX_SEED + 1) for i in range(request.n)]
        return await gather_all(self._one(request, model, s, deadline) for s in seeds)

    async def _one(self, request: ImageRequest, model: str, seed: int, deadline: Deadline) -> GeneratedImage:
        answer = await self.send(
            "POST", generation_url(self.base_url, model), json=build_request(request, seed=seed),
            headers={"Accept": "image/png"}, deadline=deadline, cap=self.settings.max_image_bytes,
            errors=lambda a: error_from_response(a.status, a.body, a.headers, backend=self.name, model=model),
        )
        return check_image(answer.body, backend=self.name, seed=seed, info={"model": model, "provider": _PROVIDER})

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        model = self.settings.model or _DEFAULT_MODEL
        url = probe_url(self.base_url, model, self.settings.whoami_url)

        def hub_error(answer: Answer) -> BackendError:
            message, _ = _error_message(answer.body, answer.headers)
            if answer.status == 404 or answer.headers.get("X-Error-Code") == "RepoNotFound":
                return Rejected(f"model {model!r} not found on the Hub: {message}",
                                backend=self.name, status=answer.status)
            return error_for_status(answer.status, message, backend=self.name)

        answer = await self.send(
            "GET", url, deadline=deadline, cap=_PROBE_CAP, timings=timings, errors=hub_error
        )
        doc = answer.json(backend=self.name)
        return probe_detail(doc, backend=self.name, model=model, whoami=bool(self.settings.whoami_url))
