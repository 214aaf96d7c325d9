"""The fal backend against the fal queue emulator, over real HTTPS on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from imagegate.backends.fal import (
    FalBackend,
    app_path,
    build_input,
    error_from_response,
    parse_output,
    parse_status,
)
from imagegate.backends.registry import load_settings
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConfigError,
    ConnectFailed,
    ContentFiltered,
    GenerationTimeout,
    HandshakeTimeout,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.events import ProgressEvent, QueuedEvent
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import fal as fal_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

KEY = "3f2a9c1e-key-id:7d41b0c2e9f8a6b5-secret"
SUBMIT = "/fal-ai/flux/schnell"
FAL = BackendCase(
    name="fal", kind="fal", cls=FalBackend, create_app=fal_emulator.create_app, env_var="FAL_KEY", secret=KEY,
    table={"poll_interval_s": 0.02, "connect_timeout_s": 5.0, "read_timeout_s": 5.0},
    request={"prompt": "a lighthouse at dusk", "width": 256, "height": 192, "steps": 4},
)
generate = FAL.generate


@pytest.fixture
def fal_app(knobs: Knobs) -> web.Application:
    return fal_emulator.create_app(knobs=knobs, api_key=KEY)


@pytest.fixture
async def fal_url(fal_app: web.Application, local_ca: LocalCA) -> AsyncIterator[str]:
    async with serve_app(fal_app, tls=local_ca) as url:
        yield url


def paths(knobs: Knobs) -> list[str]:
    return [f"{r.method} {r.path}" for r in knobs.requests]


# --- pure translation ------------------------------------------------------------------------


def test_app_path_drops_the_sub_path_and_keeps_a_namespace() -> None:
    assert app_path("fal-ai/flux/schnell") == "fal-ai/flux"
    assert app_path("fal-ai/fast-sdxl") == "fal-ai/fast-sdxl"
    assert app_path("workflows/acme/my-flow/run") == "workflows/acme/my-flow"
    for bad in ("flux", "fal-ai/../x", "fal-ai/flux?x=1"):
        with pytest.raises(ValueError, match="fal endpoint path"):
            app_path(bad)


def test_build_input_sends_only_what_the_endpoint_takes() -> None:
    request = ImageRequest(prompt="fox", width=512, height=384, steps=4, seed=3, guidance_scale=2.5,
                           negative_prompt="blur", n=2, output_format="jpeg")
    assert build_input(request, takes=("size", "steps", "seed")) == {
        "prompt": "fox", "image_size": {"width": 512, "height": 384}, "num_images": 2, "output_format": "jpeg",
        "num_inference_steps": 4, "seed": 3,
    }
    everything = build_input(request, takes=("steps", "seed", "guidance_scale", "negative_prompt"))
    assert (everything["guidance_scale"], everything["negative_prompt"]) == (2.5, "blur")


def test_parse_status_reads_position_logs_and_a_failure() -> None:
    queued = parse_status({"status": "IN_QUEUE", "queue_position": 2}, backend="f")
    assert (queued.status, queued.position, queued.logs) == ("IN_QUEUE", 2, [])
    running = parse_status({"status": "IN_PROGRESS", "logs": [{"message": " 50%|##| 2/4"}, "junk"]}, backend="f")
    assert running.logs == [" 50%|##| 2/4"]
    assert parse_status({"status": "COMPLETED", "logs": None, "error": "boom"}, backend="f").error == "boom"
    with pytest.raises(BadResponse):
        parse_status({"queue_position": 1}, backend="f")


def test_parse_output_drops_nsfw_images_and_refuses_when_all_are() -> None:
    body = {"images": [{"url": "https://v3.fal.media/a.png"}, {"url": "https://v3.fal.media/b.png"}],
            "has_nsfw_concepts": [True, False], "seed": 7}
    assert parse_output(body, backend="f") == (["https://v3.fal.media/b.png"], 7, 1)
    with pytest.raises(ContentFiltered, match="all 1 images"):
        parse_output({"images": [{"url": "https://x/a.png"}], "has_nsfw_concepts": [True]}, backend="f")


def test_a_422_detail_list_becomes_one_line_per_field() -> None:
    body = b'{"detail": [{"loc": ["body", "num_inference_steps"], "msg": "Input should be less than or equal to 12"}]}'
    error = error_from_response(422, body, {}, backend="f")
    assert isinstance(error, Rejected) and str(error).endswith("num_inference_steps: Input should be less than or equal to 12")


def test_a_model_that_is_no_endpoint_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model"):
        make_settings([{"name": "fal", "kind": "fal", "model": "flux"}], environ={"FAL_KEY": KEY}, tmp_path=tmp_path)


# --- over HTTPS --------------------------------------------------------------------------------


async def test_submit_polls_the_app_path_and_fetches_the_result(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=512, height=384, seed=9)
    assert (image.width, image.height, image.format, image.seed) == (512, 384, ImageFormat.PNG, 9)
    submit, status, result, download = knobs.requests
    assert f"{submit.method} {submit.path}" == f"POST {SUBMIT}"
    assert submit.headers["Authorization"] == f"Key {KEY}"
    assert submit.body == {"prompt": "a lighthouse at dusk", "image_size": {"width": 512, "height": 384},
                           "num_images": 1, "output_format": "png", "num_inference_steps": 4, "seed": 9}
    rid = image.info["request_id"]
    assert status.path == f"/fal-ai/flux/requests/{rid}/status" and status.query == {"logs": "0"}
    assert result.path == f"/fal-ai/flux/requests/{rid}"
    assert download.path.startswith("/files/") and "Authorization" not in download.headers


async def test_a_listener_sees_the_queue_position_then_the_steps_from_the_logs(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("plan", queue=[2, 1, 0], steps=4)
    async with ImageService(FAL.settings(fal_url, tmp_path, local_ca)) as service:
        events = [e async for e in service.stream(ImageRequest(**FAL.request))]
    told = [(e.type, getattr(e, "position", None), getattr(e, "step", None)) for e in events
            if isinstance(e, QueuedEvent | ProgressEvent)]
    assert told == [("queued", 3, None), ("queued", 2, None), ("queued", 1, None),
                    ("progress", None, 1), ("progress", None, 2), ("progress", None, 3), ("progress", None, 4)]
    assert events[-1].type == "completed"
    assert all(r.query == {"logs": "1"} for r in knobs.requests if r.path.endswith("/status"))


async def test_input_fal_refuses_is_rejected_naming_the_field(fal_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        with pytest.raises(Rejected, match="num_inference_steps: Input should be less than or equal to 12"):
            await generate(backend, steps=20)


async def test_a_failed_request_is_the_error_its_result_answers(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("request_error", status=500, detail="CUDA out of memory")
    await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, ServerError, match="CUDA out of memory")


async def test_flagged_images_are_content_filtered(fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("nsfw")
    await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, ContentFiltered)


async def test_a_request_still_queued_at_the_deadline_is_cancelled_at_fal(
    fal_app: web.Application, fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stuck")
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        with pytest.raises(GenerationTimeout, match="IN_QUEUE"):
            await generate(backend, deadline_s=0.4)
    state = fal_app[fal_emulator.STATE_KEY]
    assert state.cancelled == list(state.requests)
    assert paths(knobs)[-1].startswith("PUT /fal-ai/flux/requests/") and paths(knobs)[-1].endswith("/cancel")


async def test_a_cancelled_generate_cancels_its_fal_request(
    fal_app: web.Application, fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stuck")
    state = fal_app[fal_emulator.STATE_KEY]
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        task = asyncio.create_task(generate(backend, deadline_s=30))
        async with asyncio.timeout(5):
            while not any(r.path.endswith("/status") for r in knobs.requests):
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert state.cancelled == list(state.requests)  # done before the cancellation returned


async def test_transient_status_errors_are_polled_through(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("plan", queue=[0], steps=1)
    knobs.arm("status", status=503, count=2, path="/fal-ai/flux/requests/*")
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, Rejected), (401, AuthFailed), (403, AuthFailed), (422, Rejected), (429, RateLimited),
     (500, ServerError), (503, Unavailable)],
)
async def test_submit_statuses_map_to_their_kind(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, status: int, kind: type[BackendError]
) -> None:
    knobs.arm("status", status=status, body={"detail": "told to fail"}, path=SUBMIT)
    error = await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, BackendError)
    assert type(error) is kind and str(error).endswith("told to fail")


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(25, 31))
async def test_rate_limited_reads_retry_after(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers(), path=SUBMIT)
    retry_after.check(await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, RateLimited))


async def test_an_image_that_is_no_image_is_bad_response(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, BadResponse, match="not a PNG")


async def test_stalled_submit_is_generation_timeout(fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("stall", path=SUBMIT)
    opened = FAL.backend(fal_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


async def test_reset_is_connect_failed(fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("reset", path=SUBMIT)
    await fails(FAL.backend(fal_url, tmp_path, local_ca), generate, ConnectFailed)


async def test_tls_black_hole_is_handshake_timeout(blackhole_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = FAL.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


# --- probe, config, secrets, the command ------------------------------------------------------


async def test_probe_asks_the_status_of_no_request_and_spends_nothing(
    fal_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=2)
    assert health.ok and "key accepted" in (health.detail or "")
    assert paths(knobs) == ["GET /fal-ai/flux/requests/00000000-0000-0000-0000-000000000000/status"]


async def test_probe_with_a_refused_key_is_auth_failed(fal_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with FAL.backend(fal_url, tmp_path, local_ca, secret="someone:else") as backend:
        health = await backend.probe(timeout=2)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")


async def test_refused_key_is_shown_nowhere(knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with FAL.serve(knobs, local_ca, api_key="the:emulators-own-key") as url:
        settings = FAL.settings(url, tmp_path, local_ca)
        _, shown = await shown_after_refused_secret(settings, ImageRequest(prompt="fox", width=256, height=256))
    assert KEY not in shown and KEY.split(":")[1] not in shown


def test_fal_key_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"FAL_KEY": KEY}, dotenv=False)
    assert [(b.kind, b.model) for b in settings.backends] == [("fal", "fal-ai/flux/schnell")]


async def test_cli_generate_writes_the_512x384_image(fal_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    config = write_config(tmp_path, f'[[backend]]\nname = "fal"\nkind = "fal"\nbase_url = "{fal_url}"\n'
                                    f'ca_bundle = "{local_ca.ca_file}"\npoll_interval_s = 0.05\n')
    doc = await cli_generate(
        "a windmill at noon", "--width", "512", "--height", "384", "--seed", "9", "--steps", "12",
        config=config, env={"FAL_KEY": KEY}, cwd=tmp_path, secret=KEY,
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (512, 384, 9)


async def test_urls_the_answer_names_on_another_host_are_not_followed_with_the_key(
    fal_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with FAL.backend(fal_url, tmp_path, local_ca) as backend:
        answer = {"request_id": "r1", "status_url": "https://evil.example/r1/status",
                  "response_url": f"{fal_url}/fal-ai/flux/requests/r1", "cancel_url": "http://127.0.0.1:1/x"}
        urls = backend._urls(answer, "fal-ai/flux")
    assert urls["status_url"] == f"{fal_url}/fal-ai/flux/requests/r1/status"  # built on base_url instead
    assert urls["response_url"] == f"{fal_url}/fal-ai/flux/requests/r1"  # same origin: used as given
    assert urls["cancel_url"] == f"{fal_url}/fal-ai/flux/requests/r1/cancel"
