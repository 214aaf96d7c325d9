"""What every provider route of the stand-in does first, and each provider's error shape.

In order, as the real router does it: the HF token (401 from the router, whatever the
provider), the provider-side model id (404 from the router: ``{"error": "Model not supported
by provider <p>"}``, a third-party quote, UNCONFIRMED wording), the account's credit (402,
``arm("no_balance")``), then the provider's own validation, answered in the provider's shape:

- fal-ai: 422 ``{"detail": [{"loc": ["body", field], "msg", "type"}]}`` (fal apps are
  FastAPI/pydantic endpoints: https://docs.fal.ai/model-apis/errors);
- together, nscale: 400 ``{"error": {"message", "type": "invalid_request_error", "param"}}``
  (OpenAI's shape, which both APIs follow; nscale's exact body UNCONFIRMED);
- replicate: 422 ``{"title": "Input validation failed", "detail", "status": 422,
  "invalid_fields": [...]}`` (Replicate answers problem details: https://replicate.com/docs/
  topics/predictions/input-validation);
- wavespeed: 400 ``{"code": 400, "message", "data": null}`` (its envelope, wavespeed.ai/docs);
- zai-org: 400 ``{"error": {"code": "1214", "message"}}`` (Z.ai's "invalid parameter" code,
  https://docs.z.ai/api-reference/api-code; UNCONFIRMED that the router passes it as is).

A field of the wrong type or a missing required one is refused; a field the provider does not
know is ignored (none of these APIs is documented to refuse one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.hf_route import no_balance
from imagegate.testing.hf_inference.hub import unauthorized
from imagegate.testing.hf_inference.state import RouterState

__all__ = ["NUMBER", "Rules", "admitted", "first_problem", "refused"]

NUMBER = (int, float)
Rules = Mapping[str, tuple[tuple[type, ...], bool]]  # field -> (types, required)


def first_problem(doc: Mapping[str, Any], rules: Rules) -> tuple[str, str] | None:
    """The first field of ``doc`` that breaks ``rules``: (field, what is wrong)."""
    for name, (types, required) in rules.items():
        value = doc.get(name)
        if value is None:
            if required:
                return name, "field required"
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return name, f"must be of type {' or '.join(t.__name__ for t in types)}"
        if isinstance(value, str) and required and not value:
            return name, "must not be empty"
    return None


def refused(provider: str, field: str, message: str) -> web.Response:
    """The provider's own answer to an invalid field."""
    text = f"{field}: {message}"
    if provider == "fal-ai":
        return web.json_response(
            {"detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}]}, status=422)
    if provider == "replicate":
        return web.json_response({
            "title": "Input validation failed", "detail": f"- input.{field}: {message}", "status": 422,
            "invalid_fields": [{"type": "invalid", "field": f"input.{field}", "description": message}],
        }, status=422, content_type="application/problem+json")
    if provider == "wavespeed":
        return web.json_response({"code": 400, "message": text, "data": None}, status=400)
    if provider == "zai-org":
        return web.json_response({"error": {"code": "1214", "message": text}}, status=400)
    return web.json_response(
        {"error": {"message": text, "type": "invalid_request_error", "param": field, "code": None}},
        status=400)


async def admitted(
    state: RouterState, request: web.Request, provider: str, rules: Rules, *,
    path_id: str | None = None, body_model: bool = False,
) -> dict[str, Any] | web.Response:
    """The JSON body of a call the router lets through and the provider accepts, or the
    refusal: the token, the provider-side id (in the path: ``path_id``; in the body's ``model``:
    ``body_model``), the credit, then the provider's ``rules``."""
    if not state.authorized(request):
        return unauthorized()
    if path_id is not None and state.served(provider, path_id) is None:
        return _not_served(provider)
    balance = no_balance(state.knobs, request.path)
    if balance is not None:
        return balance
    try:
        body = json.loads(await request.read())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return refused(provider, "body", "must be a JSON object")
    problem = first_problem(body, rules)
    if problem:
        return refused(provider, *problem)
    if body_model and state.served(provider, body["model"]) is None:
        return _not_served(provider)
    return body


def _not_served(provider: str) -> web.Response:
    return web.json_response({"error": f"Model not supported by provider {provider}"}, status=404)
