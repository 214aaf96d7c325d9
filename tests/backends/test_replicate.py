"""The Replicate backend against the Replicate emulator, over real HTTPS on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from imagegate.backends.registry import load_settings
from imagegate.backends.replicate import (
    FLUX_SCHNELL,
    ModelRef,
    ReplicateBackend,
    build_input,
    capabilities_from,
    error_from_response,
    parse_prediction,
    parse_schema,
    prediction_error,
)
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConfigError,
    ConnectFailed,
    ContentFiltered,
    GenerationTimeout,
    HandshakeTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
)
from imagegate.events import ProgressEvent, QueuedEvent
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import replicate as replicate_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

KEY = "r8_7Hc2Qm9ZxW41pL0vTn3Ks8dEa5Yb"
SDXL = f"stability-ai/sdxl:{replicate_emulator.SDXL.version}"
REPLICATE = BackendCase(
    name="replicate", kind="replicate", cls=ReplicateBackend, create_app=replicate_emulator.create_app,
    env_var="REPLICATE_API_TOKEN", secret=KEY,
    table={"poll_interval_s": 0.02, "connect_timeout_s": 5.0, "read_timeout_s": 5.0, "model": SDXL},
    request={"prompt": "a lighthouse at dusk", "width": 256, "height": 192},
)
generate = REPLICATE.generate


@pytest.fixture
def replicate_app(knobs: Knobs) -> web.Application:
    return replicate_emulator.create_app(knobs=knobs, api_key=KEY)


@pytest.fixture
async def replicate_url(replicate_app: web.Application, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(replicate_app, tls=local_ca) as url:
        yield url


def sent(knobs: Knobs) -> list[str]:
    return [f"{r.method} {r.path}" for r in knobs.requests]


# --- pure translation ------------------------------------------------------------------------


def test_model_refs_pick_the_route() -> None:
    official = ModelRef.parse("black-forest-labs/flux-schnell")
    assert (official.create_path(), official.schema_path()) == (
        "/v1/models/black-forest-labs/flux-schnell/predictions", "/v1/models/black-forest-labs/flux-schnell")
    pinned = ModelRef.parse(SDXL)
    assert pinned.create_path() == "/v1/predictions"
    assert pinned.schema_path() == f"/v1/models/stability-ai/sdxl/versions/{replicate_emulator.SDXL.version}"
    for bad in ("flux", "a/b:123", "a/b/c"):
        with pytest.raises(ValueError, match="owner/name"):
            ModelRef.parse(bad)


def test_flux_schnell_takes_an_aspect_ratio_and_its_own_names() -> None:
    request = ImageRequest(prompt="fox", width=512, height=384, n=2, steps=4, seed=1, guidance_scale=3.0,
                           output_format="jpeg")
    assert build_input(request, FLUX_SCHNELL) == {"prompt": "fox", "aspect_ratio": "4:3", "num_outputs": 2,
                                                  "num_inference_steps": 4, "seed": 1, "output_format": "jpg"}
    caps = capabilities_from(FLUX_SCHNELL)
    assert caps.aspect_ratios is not None and "21:9" in caps.aspect_ratios and caps.width is None
    assert (caps.max_n, caps.steps, caps.formats) == (4, caps.steps, ("webp", "jpeg", "png"))
    assert caps.steps is not None and (caps.steps.min, caps.steps.max) == (1, 4)
    assert "guidance_scale" not in caps.takes and "negative_prompt" not in caps.takes


def test_a_cog_schema_is_read_with_its_ref_enums() -> None:
    schema = parse_schema(replicate_emulator.SDXL.openapi, source="discovered")
    assert schema is not None and schema.enum("scheduler") == (
        "DDIM", "DPMSolverMultistep", "HeunDiscrete", "KarrasDPM", "K_EULER_ANCESTRAL", "K_EULER", "PNDM")
    caps = capabilities_from(schema)
    assert set(caps.takes) == {"negative_prompt", "steps", "guidance_scale", "seed", "sampler", "size"}
    assert caps.guidance_scale is not None and (caps.guidance_scale.min, caps.guidance_scale.max) == (1, 50)
    assert (caps.max_n, caps.formats, caps.samplers and caps.samplers[0]) == (4, ("png",), "DDIM")
    body = build_input(ImageRequest(prompt="fox", width=512, height=384, sampler="K_EULER"), schema)
    assert body == {"prompt": "fox", "width": 512, "height": 384, "num_outputs": 1, "scheduler": "K_EULER"}
    assert parse_schema({"components": {}}, source="x") is None


def test_predictions_and_their_failures_are_read() -> None:
    body = {"id": "p1", "status": "succeeded", "output": "https://replicate.delivery/a.png", "logs": "",
            "urls": {"get": "https://api.replicate.com/v1/predictions/p1"}}
    prediction = parse_prediction(body, backend="r")
    assert prediction.outputs == ["https://replicate.delivery/a.png"] and prediction.cancel_url is None
    failed = parse_prediction({"id": "p2", "status": "failed", "error": "NSFW content detected."}, backend="r")
    assert isinstance(prediction_error(failed, backend="r"), ContentFiltered)
    oom = parse_prediction({"id": "p3", "status": "failed", "error": "CUDA out of memory"}, backend="r")
    assert isinstance(prediction_error(oom, backend="r"), ServerError)
    with pytest.raises(BadResponse):
        parse_prediction({"status": "starting"}, backend="r")


def test_problem_details_with_invalid_fields_become_one_line() -> None:
    body = (b'{"title": "Input validation failed", "status": 422, "detail": "-", "invalid_fields": '
            b'[{"type": "required", "field": "", "description": "input is required"}]}')
    error = error_from_response(422, body, {}, backend="r")
    assert isinstance(error, Rejected) and "input: input is required" in str(error)
    assert isinstance(error_from_response(402, b'{"detail": "Monthly spend limit reached"}', {}, backend="r"),
                      QuotaExhausted)


def test_a_model_that_is_no_reference_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        make_settings([{"name": "r", "kind": "replicate", "model": "sdxl"}], environ={"REPLICATE_API_TOKEN": KEY},
                      tmp_path=tmp_path)


# --- over HTTPS --------------------------------------------------------------------------------


async def test_a_pinned_version_runs_with_prefer_wait_and_answers_the_size_asked(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=512, height=384, seed=9, steps=12, negative_prompt="fog")
    assert (image.width, image.height, image.format, image.seed) == (512, 384, ImageFormat.PNG, 9)
    assert sent(knobs)[:2] == [f"GET /v1/models/stability-ai/sdxl/versions/{replicate_emulator.SDXL.version}",
                               "POST /v1/predictions"]
    create = knobs.requests[1]
    assert create.headers["Authorization"] == f"Bearer {KEY}" and create.headers["Prefer"].startswith("wait=")
    assert 1 <= int(create.headers["Prefer"].removeprefix("wait=")) <= 9  # 1 s short of the 10 s deadline
    assert create.body == {"version": replicate_emulator.SDXL.version, "input": {
        "prompt": "a lighthouse at dusk", "width": 512, "height": 384, "num_outputs": 1, "seed": 9,
        "num_inference_steps": 12, "negative_prompt": "fog"}}
    download = knobs.requests[-1]
    assert download.path.startswith("/delivery/") and "Authorization" not in download.headers


async def test_an_official_model_runs_by_name_with_an_aspect_ratio(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = REPLICATE.backend(replicate_url, tmp_path, local_ca, model="black-forest-labs/flux-schnell")
    async with opened as backend:
        images = await generate(backend, width=512, height=384, n=2, output_format="webp")
    assert [(i.width, i.height, i.format) for i in images] == [(1152, 896, ImageFormat.WEBP)] * 2
    create = next(r for r in knobs.requests if r.method == "POST")
    assert create.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create.body == {"input": {"prompt": "a lighthouse at dusk", "aspect_ratio": "4:3", "num_outputs": 2,
                                     "output_format": "webp"}}


async def test_an_unfinished_answer_is_polled_and_a_listener_sees_the_steps(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("plan", statuses=["starting", "processing", "processing", "succeeded"], steps=2)
    async with ImageService(REPLICATE.settings(replicate_url, tmp_path, local_ca)) as service:
        events = [e async for e in service.stream(ImageRequest(**REPLICATE.request))]
    told = [(e.type, getattr(e, "step", None)) for e in events if isinstance(e, QueuedEvent | ProgressEvent)]
    assert told == [("queued", None), ("progress", 1), ("progress", 2)]
    assert events[-1].type == "completed"
    polls = [r for r in knobs.requests if r.method == "GET" and r.path.startswith("/v1/predictions/")]
    assert len(polls) == 3


async def test_a_slow_prediction_is_held_by_prefer_wait_not_polled(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("slow", seconds=0.3)
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256
    assert not [r for r in knobs.requests if r.method == "GET" and r.path.startswith("/v1/predictions/")]


async def test_outputs_as_data_urls_are_decoded_in_place(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("data_url")
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256 and not [r for r in knobs.requests if r.path.startswith("/delivery/")]


@pytest.mark.parametrize(("arm", "kind", "match"), [
    ({"kind": "failed", "error": "CUDA out of memory"}, ServerError, "CUDA out of memory"),
    ({"kind": "nsfw"}, ContentFiltered, "NSFW"),
])
async def test_a_failed_prediction_is_its_error(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, arm: dict[str, Any],
    kind: type[BackendError], match: str,
) -> None:
    knobs.arm(arm.pop("kind"), **arm)
    await fails(REPLICATE.backend(replicate_url, tmp_path, local_ca), generate, kind, match=match)


async def test_input_the_schema_refuses_is_rejected_naming_it(
    replicate_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = REPLICATE.backend(replicate_url, tmp_path, local_ca, model="black-forest-labs/flux-schnell")
    async with opened as backend:  # straight to the backend: no router fits the steps to 1..4
        with pytest.raises(Rejected, match="input.num_inference_steps: Must be less than or equal to 4"):
            await generate(backend, steps=12)


async def test_a_prediction_still_running_at_the_deadline_is_cancelled(
    replicate_app: web.Application, replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("plan", statuses=["starting"])
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        with pytest.raises(GenerationTimeout, match="starting"):
            await generate(backend, deadline_s=0.5)
    state = replicate_app[replicate_emulator.STATE_KEY]
    assert state.canceled == list(state.predictions)
    assert sent(knobs)[-1] == f"POST /v1/predictions/{state.canceled[0]}/cancel"


async def test_a_cancelled_generate_cancels_its_prediction(
    replicate_app: web.Application, replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("plan", statuses=["starting", "processing"])
    state = replicate_app[replicate_emulator.STATE_KEY]
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        task = asyncio.create_task(generate(backend, deadline_s=30))
        async with asyncio.timeout(5):
            while not any(r.method == "GET" and r.path.startswith("/v1/predictions/") for r in knobs.requests):
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert state.canceled == list(state.predictions)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthFailed), (402, QuotaExhausted), (404, Rejected), (422, Rejected), (429, RateLimited), (500, ServerError)],
)
async def test_create_statuses_map_to_their_kind(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, status: int, kind: type[BackendError]
) -> None:
    knobs.arm("status", status=status, body={"title": "Told to fail", "detail": "told to fail", "status": status},
              path="/v1/predictions")
    error = await fails(REPLICATE.backend(replicate_url, tmp_path, local_ca), generate, BackendError)
    assert type(error) is kind and "told to fail" in str(error)


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(25, 31))
async def test_throttled_create_reads_retry_after(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, path="/v1/predictions", headers=retry_after.headers(),
              body={"detail": "Request was throttled. Your rate limit resets in ~30s."})
    error = await fails(REPLICATE.backend(replicate_url, tmp_path, local_ca), generate, RateLimited)
    retry_after.check(error)
    assert "throttled" in str(error)


async def test_an_output_that_is_no_image_is_bad_response(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(REPLICATE.backend(replicate_url, tmp_path, local_ca), generate, BadResponse, match="not a PNG")


async def test_stalled_create_is_generation_timeout(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall", path="/v1/predictions")
    opened = REPLICATE.backend(replicate_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.6)


async def test_reset_is_connect_failed(replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("reset", path="/v1/predictions")
    await fails(REPLICATE.backend(replicate_url, tmp_path, local_ca), generate, ConnectFailed)


async def test_tls_black_hole_is_handshake_timeout(blackhole_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = REPLICATE.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


# --- probe, config, secrets, the command ------------------------------------------------------


async def test_probe_reads_the_account_and_the_models_schema(
    replicate_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        assert backend.capabilities.max_n == 1  # before the schema is read: the common names only
        health = await backend.probe(timeout=2)
        assert backend.capabilities.samplers is not None and "K_EULER" in backend.capabilities.samplers
    assert health.ok and (health.detail or "").startswith("account emulator (user)")
    assert sent(knobs) == ["GET /v1/account", f"GET /v1/models/stability-ai/sdxl/versions/{replicate_emulator.SDXL.version}"]


async def test_probe_with_a_refused_token_is_auth_failed(replicate_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca, secret="r8_wrong") as backend:
        health = await backend.probe(timeout=2)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")


async def test_refused_token_is_shown_nowhere(knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with REPLICATE.serve(knobs, local_ca, api_key="r8_the-emulators-own") as url:
        settings = REPLICATE.settings(url, tmp_path, local_ca)
        _, shown = await shown_after_refused_secret(settings, ImageRequest(prompt="fox", width=256, height=256))
    assert KEY not in shown


def test_replicate_api_token_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"REPLICATE_API_TOKEN": KEY}, dotenv=False)
    assert [(b.kind, b.model) for b in settings.backends] == [("replicate", "black-forest-labs/flux-schnell")]


async def test_cli_generate_writes_the_512x384_image(replicate_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    config = write_config(tmp_path, f'[[backend]]\nname = "replicate"\nkind = "replicate"\nbase_url = "{replicate_url}"\n'
                                    f'ca_bundle = "{local_ca.ca_file}"\nmodel = "{SDXL}"\n')
    doc = await cli_generate(
        "a windmill at noon", "--width", "512", "--height", "384", "--seed", "9", "--steps", "12",
        config=config, env={"REPLICATE_API_TOKEN": KEY}, cwd=tmp_path, secret=KEY,
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (512, 384, 9)


async def test_urls_the_prediction_names_on_another_host_are_not_followed_with_the_token(
    replicate_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    prediction = parse_prediction({"id": "p1", "status": "starting", "urls": {
        "get": "https://api.attacker.example/v1/predictions/p1", "cancel": f"{replicate_url}/v1/predictions/p1/cancel"}},
        backend="r")
    async with REPLICATE.backend(replicate_url, tmp_path, local_ca) as backend:
        assert backend._own(prediction.get_url, prediction) == f"{replicate_url}/v1/predictions/p1"
        assert backend._own(prediction.cancel_url, prediction, "/cancel") == f"{replicate_url}/v1/predictions/p1/cancel"
