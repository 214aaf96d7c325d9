"""The providers that answer with a job to poll: wavespeed and zai-org; and the image files.

- ``POST /wavespeed/api/v3/{providerId}`` -> WaveSpeed's envelope ``{"code": 200, "message":
  "success", "data": {"id", "model", "outputs": [], "urls": {"get":
  "https://api.wavespeed.ai/api/v3/predictions/{id}/result"}, "has_nsfw_contents": [],
  "status": "created", "created_at", "error": "", "timings"}}``; ``GET
  /wavespeed/api/v3/predictions/{id}/result`` -> the same with ``status`` ``processing``,
  then ``completed`` and ``outputs``, or ``failed`` and ``error``
  (https://wavespeed.ai/docs/shared/submit-response, .../get-result). ``urls.get`` names
  WaveSpeed's own host, as WaveSpeed does; clients poll its path under the router's
  ``/wavespeed`` prefix.
- ``POST /zai-org/api/paas/v4/async/images/generations`` -> ``{"model", "id", "request_id",
  "task_status": "PROCESSING"}``; ``GET /zai-org/api/paas/v4/async-result/{id}`` ->
  ``PROCESSING``, then ``SUCCESS`` with ``image_result: [{"url"}]`` or ``FAIL``
  (https://docs.z.ai/api-reference/image/generate-image-async, .../get-image-status). The
  size must be ``WxH``, each side 1024-2048 and divisible by 32 (GLM-Image's rule, the only
  model this endpoint serves).
- ``GET /files/{name}``: the images this stand-in made, like a provider's CDN (no auth).

A job ends at its first poll unless ``arm("job_pending", polls=N)`` keeps it running for N
polls; ``arm("job_failed")`` makes it fail; ``arm("nsfw")`` flags WaveSpeed's output;
``arm("image_url", url=...)`` points its image elsewhere; ``arm("not_image",
path="/files/*")`` serves an HTML page instead of the next image.
"""

from __future__ import annotations

import random
import re
from typing import Any

from aiohttp import web

from imagegate.testing.hf_inference.checks import NUMBER, admitted, refused
from imagegate.testing.hf_inference.hub import unauthorized
from imagegate.testing.hf_inference.state import Job, RouterState, image_response
from imagegate.testing.hf_inference.sync_routes import image_url

__all__ = ["job_routes"]

_WAVESPEED_RULES = {"prompt": ((str,), True), "negative_prompt": ((str,), False),
                    "width": ((int,), False), "height": ((int,), False),
                    "num_inference_steps": ((int,), False), "guidance_scale": (NUMBER, False),
                    "seed": ((int,), False)}
_ZAI_RULES = {"model": ((str,), True), "prompt": ((str,), True), "size": ((str,), False),
              "quality": ((str,), False), "user_id": ((str,), False)}
_ZAI_SIZE = re.compile(r"(\d{3,4})x(\d{3,4})")


def _glm_size(size: str) -> tuple[int, int] | None:
    match = _ZAI_SIZE.fullmatch(size)
    if match is None:
        return None
    w, h = int(match[1]), int(match[2])
    ok = all(1024 <= side <= 2048 and side % 32 == 0 for side in (w, h)) and w * h <= 2**22
    return (w, h) if ok else None


def job_routes(state: RouterState) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    knobs = state.knobs

    def new_job(request: web.Request, provider: str, width: int, height: int, seed: int, prompt: str) -> str:
        pending = knobs.take("job_pending", request.path)
        job_id = state.new_id()
        state.jobs[job_id] = Job(
            provider=provider, polls_left=int(pending.get("polls", 1)) if pending else 0,
            image=image_url(state, request, width, height, seed, prompt, "png"),
            failed=knobs.take("job_failed", request.path) is not None,
            nsfw=knobs.take("nsfw", request.path) is not None,
        )
        return job_id

    def polled(request: web.Request, provider: str) -> Job | web.Response:
        if not state.authorized(request):
            return unauthorized()
        job = state.jobs.get(request.match_info["job"])
        if job is None or job.provider != provider:
            return web.json_response({"error": "task not found"}, status=404)
        return job

    @routes.post("/wavespeed/api/v3/{pid:.+}")
    async def wavespeed(request: web.Request) -> web.Response:
        body = await admitted(state, request, "wavespeed", _WAVESPEED_RULES, path_id=request.match_info["pid"])
        if isinstance(body, web.Response):
            return body
        seed = body.get("seed", random.randrange(2**31))
        job = new_job(request, "wavespeed", body.get("width", 1024), body.get("height", 1024), seed, body["prompt"])
        return web.json_response(_wavespeed_doc(job, request.match_info["pid"], "created", [], error=""))

    @routes.get("/wavespeed/api/v3/predictions/{job}/result")
    async def wavespeed_result(request: web.Request) -> web.Response:
        job = polled(request, "wavespeed")
        if isinstance(job, web.Response):
            return job
        job_id = request.match_info["job"]
        if job.running():
            return web.json_response(_wavespeed_doc(job_id, "", "processing", [], error=""))
        if job.failed:
            return web.json_response(_wavespeed_doc(job_id, "", "failed", [], error="inference failed"))
        return web.json_response(_wavespeed_doc(job_id, "", "completed", [job.image], error="", nsfw=job.nsfw))

    @routes.post("/zai-org/api/paas/v4/async/images/generations")
    async def zai(request: web.Request) -> web.Response:
        body = await admitted(state, request, "zai-org", _ZAI_RULES, body_model=True)
        if isinstance(body, web.Response):
            return body
        size = _glm_size(body.get("size", "1280x1280"))
        if size is None:
            return refused("zai-org", "size", "width and height must be 1024-2048 and divisible by 32")
        job = new_job(request, "zai-org", size[0], size[1], random.randrange(2**31), body["prompt"])
        return web.json_response({"model": body["model"], "id": job, "request_id": job, "task_status": "PROCESSING"})

    @routes.get("/zai-org/api/paas/v4/async-result/{job}")
    async def zai_result(request: web.Request) -> web.Response:
        job = polled(request, "zai-org")
        if isinstance(job, web.Response):
            return job
        doc: dict[str, Any] = {"model": "glm-image", "id": request.match_info["job"],
                               "request_id": request.match_info["job"]}
        if job.running():
            return web.json_response({**doc, "task_status": "PROCESSING"})
        if job.failed:
            return web.json_response({**doc, "task_status": "FAIL"})
        return web.json_response({**doc, "task_status": "SUCCESS", "image_result": [{"url": job.image}]})

    @routes.get("/files/{name}")
    async def files(request: web.Request) -> web.Response:
        if knobs.take("not_image", request.path) is not None:
            return web.Response(body=b"<html><body>Not here</body></html>", content_type="text/html")
        found = image_response(request.match_info["name"])
        return found if found is not None else web.Response(status=404, text="Not Found")

    return routes


def _wavespeed_doc(job: str, model: str, status: str, outputs: list[str], *, error: str,
                   nsfw: bool = False) -> dict[str, Any]:
    data = {
        "id": job, "model": model, "outputs": outputs,
        "urls": {"get": f"https://api.wavespeed.ai/api/v3/predictions/{job}/result"},
        "has_nsfw_contents": [nsfw] if outputs else [], "status": status,
        "created_at": "2026-01-01T00:00:00.000Z", "error": error, "timings": {"inference": 10},
    }
    return {"code": 200, "message": "success", "data": data}
