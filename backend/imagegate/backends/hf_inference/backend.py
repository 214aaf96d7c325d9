"""The ``hf_inference`` backend: one router provider, its Hub mapping, and the calls.

- Before a call to any provider but hf-inference, the Hub mapping says the provider-side id
  of the model (``hub.py``). It is cached per model: the probe refreshes the configured
  model's each interval; another model is looked up on first use and again once older than
  ``MAPPING_TTL_S`` (a failed refresh keeps the old answer). The lookup is one more HTTP
  exchange with the backend's own timeouts (connect apart from read) inside the request's
  deadline. hf-inference needs no id: it never waits for the Hub.
- A model the mapping says the provider does not serve (or serves only in staging) is
  ``capabilities_for(request).model_refused``: routing skips this backend before any I/O,
  without touching its breaker. Before the mapping is known, the lookup at the start of the
  call finds it and fails that attempt as rejected (no breaker effect either).
- Seeds: one is always sent to a provider that takes one (drawn when none is given, so every
  image reports the seed that made it and ``n`` identical payloads cannot be answered from a
  cache); ``n > 1`` is ``n`` concurrent calls with seeds ``seed, seed+1, ...``.
- The answer is the image, base64, an image URL (fetched under the download policy, without
  credentials, at most ``MAX_DOWNLOADS`` at once), or a job polled every
  ``poll_interval_s`` (else the provider's cadence) until the deadline.

Probe: the mapping (``hub.mapping_url``), which spends no credit and checks the token (401),
or ``whoami_url`` when set (any 200: the token works; the mapping is then looked up on use).
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from imagegate.backends.hf_inference.hub import MappingEntry, choose, mapping_url, parse_mapping
from imagegate.backends.hf_inference.providers import PROVIDERS
from imagegate.backends.hf_inference.router import error_from_response, error_message, hub_base
from imagegate.backends.hf_inference.settings import AUTO, DEFAULT_MODEL, HFInferenceSettings
from imagegate.backends.hf_inference.wire import Image, ImageUrl, PollUrl, Provider, Target
from imagegate.backends.http import MAX_DOWNLOADS, Answer, Failed, HttpBackend, Pending, gather_all
from imagegate.backends.images import check_image
from imagegate.backends.transport import error_for_status
from imagegate.capabilities import Capabilities
from imagegate.errors import BackendError, Rejected, Unavailable
from imagegate.logging import get_logger
from imagegate.models import MAX_SEED, Deadline, GeneratedImage, ImageRequest

__all__ = ["MAPPING_TTL_S", "HFInferenceBackend", "probe_detail", "probe_url"]

log = get_logger(__name__)

MAPPING_TTL_S = 600.0  # a model's mapping, other than the probed one, is looked up again after
_PROBE_CAP = 1024 * 1024
_ANSWER_CAP = 256 * 1024  # a JSON answer naming a URL or a job


@dataclass(frozen=True)
class _Looked:
    """One model's mapping as last seen: its entries (None: the answer had none) and when."""

    entries: tuple[MappingEntry, ...] | None
    at: float


class HFInferenceBackend(HttpBackend[HFInferenceSettings]):
    """Hugging Face Inference Providers through the router: one provider (or ``auto``)."""

    kind = "hf_inference"

    def __init__(
        self, settings: HFInferenceSettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._looked: dict[str, _Looked] = {}
        self._extra = {"Accept": "image/png"}
        if settings.bill_to:
            self._extra["X-HF-Bill-To"] = settings.bill_to

    # -- what it serves -------------------------------------------------------------------

    @property
    def provider(self) -> str:
        return self.settings.provider

    def _default_model(self) -> str:
        return self.settings.model or DEFAULT_MODEL

    @property
    def capabilities(self) -> Capabilities | None:
        return self._capabilities(self._default_model())

    def capabilities_for(self, request: ImageRequest) -> Capabilities | None:
        return self._capabilities(request.model or self._default_model())

    def _capabilities(self, model: str) -> Capabilities | None:
        looked = self._looked.get(model)
        chosen = choose(looked.entries, self.provider, model) if looked else None
        spec = self._spec(chosen)
        if isinstance(chosen, str):
            base = spec.capabilities(None) if spec else Capabilities(source=f"built-in: {self.provider}")
            return base.model_copy(update={"model_refused": chosen})
        if spec is None:
            return None  # "auto" before the mapping is known: whoever it picks
        return spec.capabilities(self._target(model, chosen) if chosen else None)

    def _spec(self, chosen: MappingEntry | str | None) -> Provider | None:
        if isinstance(chosen, MappingEntry):
            return PROVIDERS.get(chosen.provider)
        return PROVIDERS.get(self.provider)

    def _target(self, model: str, entry: MappingEntry) -> Target:
        return Target(model, entry.provider_id, entry.adapter_weights_path, hub_base(self.base_url))

    # -- the Hub mapping ------------------------------------------------------------------

    async def _lookup(self, model: str, deadline: Deadline, timings: dict[str, float] | None = None) -> _Looked:
        """Ask the Hub which providers serve ``model`` now, and remember it."""

        def hub_error(answer: Answer) -> BackendError:
            message, _ = error_message(answer.body, answer.headers)
            if answer.status == 404 or answer.headers.get("X-Error-Code") == "RepoNotFound":
                return Rejected(f"model {model!r} not found on the Hub: {message}",
                                backend=self.name, status=answer.status)
            return error_for_status(answer.status, message, backend=self.name)

        answer = await self.send(
            "GET", mapping_url(hub_base(self.base_url), model), deadline=deadline, cap=_PROBE_CAP,
            timings=timings, errors=hub_error,
        )
        looked = _Looked(parse_mapping(answer.json(backend=self.name)), time.monotonic())
        self._looked[model] = looked
        return looked

    async def _resolve(self, model: str, deadline: Deadline) -> tuple[Provider, Target]:
        """The provider and target for ``model``: from the cache, or the Hub when needed."""
        looked = self._looked.get(model)
        if self.provider == "hf-inference" and (looked is None or looked.entries is None):
            return PROVIDERS["hf-inference"], Target(model, model, None, hub_base(self.base_url))
        if looked is None or time.monotonic() - looked.at > MAPPING_TTL_S:
            try:
                looked = await self._lookup(model, deadline)
            except BackendError as exc:
                if looked is None or not exc.transient:
                    raise
                log.warning("mapping_stale", backend=self.name, model=model, error_kind=exc.kind)
        chosen = choose(looked.entries, self.provider, model)
        if isinstance(chosen, str):
            raise Rejected(chosen, backend=self.name)
        return PROVIDERS[chosen.provider], self._target(model, chosen)

    # -- generation -----------------------------------------------------------------------

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        model = request.model or self._default_model()
        spec, target = await self._resolve(model, deadline)
        if "seed" in spec.takes:
            base = request.seed if request.seed is not None else random.randrange(MAX_SEED - 8)
            seeds: list[int | None] = [(base + i) % (MAX_SEED + 1) for i in range(request.n)]
        else:
            seeds = [None] * request.n
        calls = (self._one(request, spec, target, s, deadline) for s in seeds)
        return await gather_all(calls, limit=MAX_DOWNLOADS if spec.downloads else None)

    async def _one(
        self, request: ImageRequest, spec: Provider, target: Target, seed: int | None, deadline: Deadline
    ) -> GeneratedImage:
        call = spec.build(request, target, seed)
        headers = {**self._extra, **call.headers}
        cap = self.settings.max_image_bytes
        if spec.name != "hf-inference":  # JSON: base64 (4/3 of the image) or a URL
            cap = cap * 4 // 3 + _ANSWER_CAP
        answer = await self.send(
            "POST", self.base_url + call.path, json=call.body, headers=headers, deadline=deadline,
            cap=cap, ok=(200, 201), errors=lambda a: error_from_response(
                a.status, a.body, a.headers, backend=self.name, model=target.hf_model, provider=spec),
        )
        outcome = spec.parse(answer.body, self.name)
        if isinstance(outcome, PollUrl):
            outcome = await self._poll(spec, outcome, headers, deadline)
        info: dict[str, Any] = {"model": target.hf_model, "provider": spec.name}
        if target.provider_id != target.hf_model:
            info["provider_model"] = target.provider_id
        if isinstance(outcome, Image):
            return check_image(outcome.data, backend=self.name, seed=seed, info=info)
        data = await self.download(outcome.url, deadline, auth=False)
        return check_image(data, backend=self.name, seed=seed, info=info, quote=False)

    async def _poll(
        self, spec: Provider, job: PollUrl, headers: Mapping[str, str], deadline: Deadline
    ) -> ImageUrl:
        assert spec.poll is not None, f"{spec.name} answered a job but has no poll"
        read = spec.poll

        async def check() -> ImageUrl | Pending | Failed:
            answer = await self.send("GET", self.base_url + job.path, deadline=deadline,
                                     cap=_ANSWER_CAP, headers=headers)
            return read(answer.json(backend=self.name), self.name)

        interval = self.settings.poll_interval_s or spec.poll_interval_s
        return await self.poll(check, deadline=deadline, interval=interval, what=f"{spec.name} job {job.path}")

    # -- probe ----------------------------------------------------------------------------

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        if self.settings.whoami_url:
            answer = await self.send("GET", self.settings.whoami_url, deadline=deadline,
                                     cap=_PROBE_CAP, timings=timings)
            doc = answer.json(backend=self.name)
            name = doc.get("name") if isinstance(doc, dict) else None
            return f"token accepted (user {name})" if name else "token accepted"
        model = self._default_model()
        looked = await self._lookup(model, deadline, timings)
        return probe_detail(looked.entries, self.provider, model, backend=self.name)


def probe_url(base_url: str, model: str, whoami_url: str | None) -> str:
    """The URL the probe GETs: ``whoami_url`` when set, else the model's Hub mapping."""
    return whoami_url or mapping_url(hub_base(base_url), model)


def probe_detail(
    entries: tuple[MappingEntry, ...] | None, provider: str, model: str, *, backend: str
) -> str:
    """What the mapping says for the probe; raises when the provider does not serve the model
    (rejected: skipped, not failed) or reports it in error (unavailable) (pure)."""
    chosen = choose(entries, provider, model)
    if isinstance(chosen, str):
        raise Rejected(chosen, backend=backend)
    if entries is None:
        return f"token accepted; model {model} exists"
    if chosen.status == "error":
        raise Unavailable(f"{chosen.provider} reports model {model!r} in error (HF's last health "
                          "check of it failed)", backend=backend)
    served = f"{chosen.provider} serves {model}"
    if chosen.provider_id != model:
        served += f" as {chosen.provider_id}"
    prefix = f"{AUTO}: " if provider == AUTO else ""
    return f"{prefix}{served} ({chosen.status})"
