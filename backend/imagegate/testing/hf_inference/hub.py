"""The Hub routes the router's clients ask before generating (``/work/notes/hf_providers.md`` §4-§5).

- ``GET /api/models/{owner}/{name}``: with no query, the model info with ``pipeline_tag``
  (``provider="hf-inference"`` in huggingface_hub checks it is ``text-to-image`` before
  posting) and ``tags``; with ``expand=inferenceProviderMapping`` (the Python client's form;
  the JS client sends ``expand[]=``; both, and repeated keys, are accepted) only ``_id``,
  ``id`` and the expanded mapping, a dict keyed by provider, as ``model_info``'s docstring says
  ("only the properties in the list will be returned"; UNCONFIRMED on the live Hub); 404 with
  ``X-Error-Code: RepoNotFound`` for an unknown model. A token is optional, and checked when
  sent (401).
- ``GET /api/whoami-v2``: the token's owner; 401 without a valid token.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.state import RouterState, mapping_json

__all__ = ["hub_routes", "unauthorized"]


def unauthorized() -> web.Response:
    return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)


def hub_routes(state: RouterState) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get("/api/models/{model:.+}")
    async def model_info(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") and not state.authorized(request):
            return unauthorized()
        model = request.match_info["model"]
        providers = state.mapping.get(model)
        if providers is None:
            return web.json_response(
                {"error": "Repository not found"}, status=404, headers={"X-Error-Code": "RepoNotFound"}
            )
        doc: dict[str, Any] = {"_id": uuid.uuid5(uuid.NAMESPACE_URL, model).hex[:24], "id": model}
        expand = request.query.getall("expand", []) + request.query.getall("expand[]", [])
        if not expand:
            doc.update(modelId=model, pipeline_tag="text-to-image", library_name="diffusers",
                       tags=["diffusers", "text-to-image", "safetensors"], private=False)
        if "inferenceProviderMapping" in expand:
            doc["inferenceProviderMapping"] = mapping_json(providers)
        return web.json_response(doc)

    @routes.get("/api/whoami-v2")
    async def whoami(request: web.Request) -> web.Response:
        if not request.headers.get("Authorization") or not state.authorized(request):
            return unauthorized()
        return web.json_response(
            {"type": "user", "name": "emulator-user",
             "auth": {"type": "access_token", "accessToken": {"displayName": "emulator", "role": "read"}}}
        )

    return routes
