"""The ``kind = "hf_inference"`` table: one Hugging Face token, one or several router providers.

- ``provider``: the router provider one backend speaks: ``"hf-inference"`` (the default, and
  the only one before), any text-to-image provider of :data:`PROVIDER_NAMES`, or ``"auto"``
  (the first live text-to-image provider the Hub lists for the model, refreshed with the
  probes).
- ``providers = [...]``: the short form. One table becomes one backend per provider, named
  ``<name>/<provider>``, in the listed order, each with its own breaker, every other key
  shared (:meth:`HFInferenceSettings.expand`, which config loading calls for every table).
- ``bill_to``: the organisation billed (``X-HF-Bill-To``, as ``InferenceClient(bill_to=)``).
- ``poll_interval_s``: the pause between polls of the providers that answer with a job
  (wavespeed, zai-org); unset, each provider's own cadence.

Providers the router no longer serves are refused by name with the reason
(:data:`REMOVED_PROVIDERS`), instead of a bare "unknown".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from imagegate.backends.hf_inference.providers import PROVIDER_NAMES, REMOVED_PROVIDERS
from imagegate.config import BackendSettings, HttpBackendSettings, check_url

__all__ = ["DEFAULT_MODEL", "HFInferenceSettings", "from_env"]

DEFAULT_MODEL = "black-forest-labs/FLUX.1-schnell"
AUTO = "auto"
# a Hub user or organisation name (huggingface_hub validates repo ids the same way)
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}")


def check_provider(value: str, *, auto: bool = True) -> str:
    """A provider name this backend can speak; ValueError naming the allowed ones."""
    if value in PROVIDER_NAMES or (auto and value == AUTO):
        return value
    known = ", ".join(PROVIDER_NAMES) + (', or "auto"' if auto else "")
    if value in REMOVED_PROVIDERS:
        raise ValueError(f"{value!r} {REMOVED_PROVIDERS[value]}; text-to-image providers: {known}")
    raise ValueError(f"{value!r} is not a text-to-image provider of the router (known: {known})")


class HFInferenceSettings(HttpBackendSettings):
    """Hugging Face Inference Providers through the router (one provider, or several)."""

    kind: Literal["hf_inference"] = "hf_inference"
    base_url: str = "https://router.huggingface.co"
    model: str | None = DEFAULT_MODEL
    api_key_env: str = "HF_TOKEN"
    whoami_url: str | None = None
    provider: str = "hf-inference"
    providers: tuple[str, ...] | None = None
    bill_to: str | None = None
    poll_interval_s: float | None = Field(default=None, gt=0, le=60)

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

    @field_validator("provider")
    @classmethod
    def _known_provider(cls, value: str) -> str:
        return check_provider(value)

    @field_validator("providers")
    @classmethod
    def _known_providers(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must name at least one provider (or leave it out)")
        for name in value:
            check_provider(name, auto=False)
        twice = sorted({p for p in value if value.count(p) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return value

    @field_validator("bill_to")
    @classmethod
    def _org_name(cls, value: str | None) -> str | None:
        if value is not None and not _ORG.fullmatch(value):
            raise ValueError(f"must be a Hugging Face organisation name (got {value!r})")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> HFInferenceSettings:
        if self.providers is not None and "provider" in self.model_fields_set:
            raise ValueError("set either provider (one backend) or providers (one per provider), not both")
        return self

    def expand(self) -> tuple[BackendSettings, ...]:
        """With ``providers``, one backend per provider named ``<name>/<provider>`` (every
        other key shared); without, this table itself."""
        if self.providers is None:
            return (self,)
        base = self.model_dump(exclude={"providers", "name"}, exclude_unset=True)
        return tuple(
            type(self).model_validate({**base, "name": f"{self.name}/{p}", "provider": p})
            for p in self.providers
        )

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``HF_TOKEN`` configures HF Inference (priority 30)."""
    if not env.get("HF_TOKEN"):
        return []
    return [{"name": "hf-inference", "kind": "hf_inference", "priority": 30}]
