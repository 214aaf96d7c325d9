"""Hugging Face Inference Providers through the router: one ``HF_TOKEN``, many providers.

``router.huggingface.co/{provider}/...`` serves text-to-image from several providers, all
billed to the one Hugging Face account (or the organisation in ``bill_to``). One backend
speaks one of them (``provider``, default ``hf-inference``, or ``"auto"``); ``providers =
[...]`` makes one backend per provider, each with its own breaker, so failover runs across
them.

- ``settings``: the ``[[backend]]`` keys, the short form's expansion, ``from_env``;
- ``providers/``: one small module per provider, pure build/parse with its sources
  (huggingface_hub 2.4.0 ``inference/_providers/``, and the provider's own API reference);
- ``wire``: what a provider module is, and the helpers they share;
- ``router``: the router's error answers; ``hub``: the Hub's provider mapping;
- ``backend``: the I/O (mapping lookups, the POST, polls, downloads) and the probe.
"""

from imagegate.backends.hf_inference.backend import HFInferenceBackend, probe_url
from imagegate.backends.hf_inference.providers import PROVIDER_NAMES, PROVIDERS, REMOVED_PROVIDERS
from imagegate.backends.hf_inference.providers.hf_inference import CAPABILITIES, build_request
from imagegate.backends.hf_inference.router import error_from_response
from imagegate.backends.hf_inference.settings import HFInferenceSettings, from_env

__all__ = [
    "CAPABILITIES",
    "PROVIDERS",
    "PROVIDER_NAMES",
    "REMOVED_PROVIDERS",
    "HFInferenceBackend",
    "HFInferenceSettings",
    "build_request",
    "error_from_response",
    "from_env",
    "probe_url",
]
