"""A Hugging Face router stand-in: every text-to-image provider's route, and the Hub routes the
clients ask first (the provider mapping, whoami).

One app, as the real router is one host: ``/hf-inference/...``, ``/fal-ai/...``,
``/together/...``, ``/nscale/...``, ``/replicate/...``, ``/wavespeed/...``, ``/zai-org/...``
under one base URL, the Hub's ``/api/...`` beside them (``HF_ENDPOINT`` and the router
template both point here in tests, so huggingface_hub's own ``InferenceClient`` talks to it
too). What each route checks and answers is in its module, with sources:

- ``hub.py``: ``GET /api/models/{id}[?expand=inferenceProviderMapping]``, ``/api/whoami-v2``;
- ``hf_route.py``: ``POST /hf-inference/models/{id}`` (raw image bytes);
- ``sync_routes.py``: fal-ai (image URL), together and nscale (base64), replicate (a
  prediction, held with ``Prefer: wait``);
- ``job_routes.py``: wavespeed and zai-org (submit, then poll), and ``/files/...`` (images);
- ``checks.py``: what every provider route checks first (token, provider-side id, credit) and
  each provider's error shape; ``state.py``: the mapping (``DEFAULT_MAPPING``), jobs, images.

The mapping says which provider serves which model under which id (``create_app(mapping=...)``
replaces it); a route refuses an id its provider does not serve (404), as the router does.
Faults: the shared knobs (latency, status, reset, stall, stall_body, hostile modes) apply to
every provider route -- ``knobs.arm("stall", path="/fal-ai/*", count=100)`` black-holes one
provider while the others answer -- plus each route's own (see its module).

    python -m imagegate.testing hf_inference --port 8080 --tls --api-key hf_test
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.hf_route import hf_inference_routes
from imagegate.testing.hf_inference.hub import hub_routes
from imagegate.testing.hf_inference.job_routes import job_routes
from imagegate.testing.hf_inference.state import DEFAULT_MAPPING, RouterState, Served
from imagegate.testing.hf_inference.sync_routes import sync_routes
from imagegate.testing.knobs import Knobs, misbehaviour_middleware, record_json_body

__all__ = ["DEFAULT_MAPPING", "GENERATION_PATHS", "KNOBS_KEY", "SERVED_MODELS", "STATE_KEY", "Served",
           "create_app"]

KNOBS_KEY = web.AppKey("knobs", Knobs)
STATE_KEY = web.AppKey("state", RouterState)
# the models hf-inference serves in the default mapping
SERVED_MODELS = frozenset(m for m, providers in DEFAULT_MAPPING.items() if "hf-inference" in providers)
GENERATION_PATHS = ("/hf-inference/", "/fal-ai/", "/together/", "/nscale/", "/replicate/",
                    "/wavespeed/", "/zai-org/")


def _error_body(status: int) -> Any:
    if status == 404:
        return "Not Found"
    try:
        return {"error": HTTPStatus(status).phrase}
    except ValueError:
        return {"error": "error"}


def create_app(
    *,
    knobs: Knobs | None = None,
    api_key: str | None = "test-key",
    mapping: Mapping[str, Mapping[str, Served]] | None = None,
) -> web.Application:
    """The stand-in; requests must carry ``Authorization: Bearer <api_key>`` (``api_key=None``
    accepts any caller); ``mapping`` replaces :data:`DEFAULT_MAPPING`."""
    knobs = knobs or Knobs()
    chosen = DEFAULT_MAPPING if mapping is None else mapping
    state = RouterState(knobs, api_key, {m: dict(p) for m, p in chosen.items()})
    app = web.Application(
        middlewares=[
            misbehaviour_middleware(
                knobs, error_body=_error_body, generation_paths=GENERATION_PATHS, record_body=record_json_body
            )
        ],
        client_max_size=4 * 1024**2,
    )
    app[KNOBS_KEY] = knobs
    app[STATE_KEY] = state
    for routes in (hub_routes(state), hf_inference_routes(state), sync_routes(state), job_routes(state)):
        app.add_routes(routes)
    return app
