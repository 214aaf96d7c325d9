"""A Hugging Face Hub stand-in for what the Space backend asks it: a Space's runtime stage.

Routes (the Hub's own paths, so ``hub_url`` is the only thing a test changes):

- ``GET /api/spaces/{owner}/{name}/runtime`` -> ``{"stage", "hardware": {"current",
  "requested"}, "gcTimeout", "storage", "replicas", "devMode", ["errorMessage"]}``;
  404 ``{"error": "Repository not found"}`` for an unknown Space, 401 for a private Space
  without the right ``Authorization: Bearer`` token;
- ``GET /api/spaces/{owner}/{name}`` -> a small ``space_info`` (``id``, ``host``,
  ``subdomain``, ``private``, ``sdk``, ``runtime``) for clients that resolve ids themselves;
- ``GET /spaces/{owner}/{name}`` -> the Space's page; opening it wakes a SLEEPING/STOPPED
  Space (its stage becomes APP_STARTING) and is recorded in ``hub.wake_requests``.

    hub = HubState()
    hub.set_space("owner/app", stage="SLEEPING", hardware="zero-a10g")
    async with serve_app(create_app(hub=hub)) as hub_url: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.backends.hf_space.spaces import space_host
from imagegate.testing.knobs import Knobs, misbehaviour_middleware

__all__ = ["HUB_KEY", "STAGES", "HubState", "SpaceRuntime", "create_app"]

# huggingface_hub's SpaceStage values, plus SLEEPING (seen on slept free Spaces).
STAGES = (
    "NO_APP_FILE",
    "CONFIG_ERROR",
    "BUILDING",
    "BUILD_ERROR",
    "RUNNING",
    "RUNNING_BUILDING",
    "RUNTIME_ERROR",
    "DELETING",
    "STOPPED",
    "PAUSED",
    "APP_STARTING",
    "RUNNING_APP_STARTING",
    "SLEEPING",
)


@dataclass
class SpaceRuntime:
    """One Space as the Hub reports it."""

    stage: str = "RUNNING"
    hardware: str | None = "cpu-basic"
    requested_hardware: str | None = None
    sleep_time: int | None = 172800
    error_message: str | None = None
    private: bool = False

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stage": self.stage,
            "hardware": {
                "current": self.hardware,
                "requested": self.requested_hardware or self.hardware,
            },
            "storage": None,
            "gcTimeout": self.sleep_time,
            "replicas": {"current": 1, "requested": 1},
            "devMode": False,
        }
        if self.error_message:
            body["errorMessage"] = self.error_message
        return body


@dataclass
class HubState:
    """The Spaces the stand-in knows, switchable at run time, and what it was asked."""

    spaces: dict[str, SpaceRuntime] = field(default_factory=dict)
    token: str | None = None
    wake_requests: list[str] = field(default_factory=list)

    def set_space(self, space: str, stage: str = "RUNNING", **fields: Any) -> SpaceRuntime:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
        runtime = SpaceRuntime(stage=stage, **fields)
        self.spaces[space] = runtime
        return runtime


HUB_KEY = web.AppKey("hub", HubState)


def _error_body(status: int) -> dict[str, Any]:
    return {
        "error": {
            401: "Invalid credentials in Authorization header",
            404: "Repository not found",
            429: "You have been rate-limited",
        }.get(status, "Internal Error")
    }


def create_app(*, knobs: Knobs | None = None, hub: HubState | None = None) -> web.Application:
    """The Hub stand-in; ``hub`` holds the Spaces, ``knobs`` the shared misbehaviour switches."""
    knobs = knobs or Knobs()
    hub = hub or HubState()
    routes = web.RouteTableDef()

    def lookup(request: web.Request) -> tuple[str, SpaceRuntime]:
        space = f"{request.match_info['owner']}/{request.match_info['name']}"
        runtime = hub.spaces.get(space)
        if runtime is None:
            raise web.HTTPNotFound(
                text='{"error": "Repository not found"}', content_type="application/json"
            )
        if runtime.private and request.headers.get("Authorization") != f"Bearer {hub.token}":
            raise web.HTTPUnauthorized(
                text='{"error": "Repository not found"}', content_type="application/json"
            )
        return space, runtime

    @routes.get("/api/spaces/{owner}/{name}/runtime")
    async def runtime(request: web.Request) -> web.Response:
        _, state = lookup(request)
        return web.json_response(state.as_json())

    @routes.get("/api/spaces/{owner}/{name}")
    async def space_info(request: web.Request) -> web.Response:
        space, state = lookup(request)
        host = space_host(space)
        return web.json_response(
            {
                "id": space,
                "author": space.split("/")[0],
                "private": state.private,
                "sdk": "gradio",
                "host": host,
                "subdomain": host.removeprefix("https://").split(".")[0],
                "runtime": state.as_json(),
            }
        )

    @routes.get("/spaces/{owner}/{name}")
    async def page(request: web.Request) -> web.Response:
        space, state = lookup(request)
        hub.wake_requests.append(space)
        if state.stage in ("SLEEPING", "STOPPED"):
            state.stage = "APP_STARTING"
        return web.Response(text=f"<html><title>{space}</title></html>", content_type="text/html")

    app = web.Application(
        middlewares=[
            misbehaviour_middleware(
                knobs, error_body=_error_body, generation_paths=("/api/spaces/",)
            )
        ]
    )
    app[HUB_KEY] = hub
    app.add_routes(routes)
    return app
