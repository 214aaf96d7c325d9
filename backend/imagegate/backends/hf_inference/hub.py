"""The Hub's Inference Providers mapping: who serves a model, under which id (pure).

- Asked as ``GET {hub}/api/models/{id}?expand=inferenceProviderMapping``, the form
  huggingface_hub 2.4.0 sends (``_providers/_common.py`` ``_fetch_inference_provider_mapping``
  -> ``HfApi.model_info(model, expand=["inferenceProviderMapping"])``); the JS client sends
  ``expand[]=`` (huggingface.js ``getInferenceProviderMapping.ts``). With the token: a gated
  or private model needs it, and a bad token gets 401 here for free.
- The answer's ``inferenceProviderMapping`` is a dict ``{provider: {"providerId", "status",
  "task", "adapterWeightsPath"?, ...}}`` (what ``model_info`` gets) or a list of the same with
  a ``"provider"`` key (what ``list_models`` gets); ``hf_api.py`` ``ModelInfo.__init__``
  accepts both, and so do we, in the answer's order.
- ``status`` is ``live``, ``staging`` ("Meant for test purposes only", huggingface_hub's
  warning) or ``error`` (HF's last health check failed). huggingface_hub calls a staging model
  anyway, with a warning; imagegate routes only to ``live`` (and ``error``, reported by the
  probe): a staging model is skipped, like a model the provider does not serve.
- ``"auto"``: huggingface_hub takes the *first* entry, whatever its task or status (a chat-only
  or unknown provider first makes its call fail). imagegate takes the first entry that is a
  provider it speaks, for ``text-to-image``, ``live``; the Hub orders the list by the token
  owner's preference (https://hf.co/settings/inference-providers; the order is the Hub's,
  UNCONFIRMED beyond the docstrings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from imagegate.backends.hf_inference.providers import PROVIDERS

__all__ = ["TASK", "MappingEntry", "choose", "mapping_url", "parse_mapping", "served_text"]

TASK = "text-to-image"


@dataclass(frozen=True)
class MappingEntry:
    """One provider serving a model, as the Hub says."""

    provider: str
    provider_id: str
    status: str
    task: str
    adapter_weights_path: str | None = None


def mapping_url(hub: str, model: str) -> str:
    return f"{hub}/api/models/{quote(model, safe='/')}?expand=inferenceProviderMapping"


def parse_mapping(doc: Any) -> tuple[MappingEntry, ...] | None:
    """The entries of a model-info answer, in its order; None when it has no mapping at all.
    An entry without a string ``providerId`` is left out (huggingface_hub would fail on it)."""
    mapping = doc.get("inferenceProviderMapping") if isinstance(doc, dict) else None
    if isinstance(mapping, dict):
        items = [(name, entry) for name, entry in mapping.items()]
    elif isinstance(mapping, list):
        items = [(entry.get("provider"), entry) for entry in mapping if isinstance(entry, dict)]
    else:
        return None
    entries = []
    for name, entry in items:
        if not isinstance(name, str) or not isinstance(entry, dict):
            continue
        provider_id = entry.get("providerId")
        if not isinstance(provider_id, str) or not provider_id:
            continue
        adapter = entry.get("adapterWeightsPath")
        entries.append(MappingEntry(
            provider=name, provider_id=provider_id, status=str(entry.get("status", "unknown")),
            task=str(entry.get("task", "")), adapter_weights_path=adapter if isinstance(adapter, str) else None,
        ))
    return tuple(entries)


def served_text(entries: Sequence[MappingEntry]) -> str:
    """The providers of a mapping in words: ``fal-ai, nscale (staging), groq (conversational)``."""
    parts = []
    for e in entries:
        notes = [n for n in (e.status if e.status != "live" else "", e.task if e.task != TASK else "") if n]
        parts.append(e.provider + (f" ({', '.join(notes)})" if notes else ""))
    return ", ".join(parts) or "none"


def choose(entries: Sequence[MappingEntry] | None, provider: str, model: str) -> MappingEntry | str:
    """The entry ``provider`` (or ``"auto"``) uses for ``model``, or why it cannot serve it."""
    if entries is None:
        if provider == "hf-inference":  # the Hub answered without a mapping: the model exists
            return MappingEntry(provider, model, "unknown", TASK)
        return f"the Hub lists no inference provider for model {model!r}"
    if provider == "auto":
        for e in entries:
            if e.provider in PROVIDERS and e.task == TASK and e.status == "live":
                return e
        return (f"no live text-to-image provider imagegate speaks serves model {model!r} "
                f"(the Hub lists: {served_text(entries)})")
    found = next((e for e in entries if e.provider == provider), None)
    if found is None:
        return f"model {model!r} is not served by {provider} (served by: {served_text(entries)})"
    if found.task != TASK:
        return f"{provider} serves model {model!r} for {found.task or 'no task'}, not {TASK}"
    if found.status == "staging":
        return (f"{provider} serves model {model!r} only in staging (meant for test purposes "
                "only): not routed")
    return found
