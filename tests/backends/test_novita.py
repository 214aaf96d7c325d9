"""The Novita backend against the Novita emulator, over real HTTPS on loopback (trustme CA).

Every fault is real: a TLS listener that never answers, an RST, a stalled answer, a task that
never ends. Timeouts are fractions of a second, set through the same config keys users set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends import novita as novita_module
from imagegate.backends.novita import (
    NovitaBackend,
    build_request,
    failed_task_error,
    parse_task,
    task_progress,
)
from imagegate.backends.registry import load_settings
from imagegate.errors import (
    AllBackendsFailed,
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
    Unavailable,
)
from imagegate.events import ProgressEvent, QueuedEvent
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA
from imagegate.testing import novita as novita_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

KEY = "sk_novita-test-key-5f1c0b7e9a"
TXT2IMG = "/v3/async/txt2img"
RESULT = "/v3/async/task-result"
REQUEST_FIELDS = {
    "model_name", "prompt", "negative_prompt", "width", "height", "image_num", "steps", "seed",
    "guidance_scale", "sampler_name",
}

NOVITA = BackendCase(
    name="novita", kind="novita", cls=NovitaBackend, create_app=novita_emulator.create_app,
    env_var="NOVITA_API_KEY", secret=KEY,
    table={"poll_interval_s": 0.02, "connect_timeout_s": 5.0, "read_timeout_s": 5.0},
    request={"prompt": "a red fox in snow", "width": 256, "height": 192},
)
generate = NOVITA.generate


@pytest.fixture
async def novita_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with NOVITA.serve(knobs, local_ca) as url:
        yield url


def polls(knobs: Knobs) -> int:
    return sum(1 for r in knobs.requests if r.path == RESULT)


# --- pure translation ------------------------------------------------------------------------


def test_build_request_sends_every_documented_field_with_defaults() -> None:
    body = build_request(ImageRequest(prompt="fox", output_format="webp"), model="m.safetensors")
    assert body["extra"] == {"response_image_type": "webp"}
    assert set(body["request"]) == REQUEST_FIELDS
    assert body["request"]["seed"] == -1
    assert (body["request"]["steps"], body["request"]["guidance_scale"]) == (20, 7.5)
    assert body["request"]["sampler_name"] == "Euler a"


def test_build_request_prefers_the_requests_model_and_keeps_its_seed() -> None:
    body = build_request(ImageRequest(prompt="fox", model="x.safetensors", seed=0), model="m")
    assert (body["request"]["model_name"], body["request"]["seed"]) == ("x.safetensors", 0)


def test_parse_task_reads_the_seed_string_and_image_urls() -> None:
    body = {"extra": {"seed": "42"}, "task": {"status": "TASK_STATUS_SUCCEED"},
            "images": [{"image_url": "https://s3.example/a.png"}]}
    assert parse_task(body, backend="n") == ("TASK_STATUS_SUCCEED", "", ["https://s3.example/a.png"], 42)


def test_parse_task_without_task_object_is_bad_response() -> None:
    with pytest.raises(BadResponse):
        parse_task({"images": []}, backend="n")


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("CUDA out of memory", ServerError),
        ("invalid sampler_name", Rejected),
        ("model not exist", Rejected),
        ("ILLEGAL_PROMPT: prompt contains inappropriate content", ContentFiltered),
        ("", ServerError),
    ],
)
def test_failed_task_kind_is_read_from_its_reason(reason: str, kind: type[BackendError]) -> None:
    error = failed_task_error("t1", reason, backend="n")
    assert type(error) is kind
    assert reason in str(error)


# --- the happy path over HTTPS ---------------------------------------------------------------


async def test_generate_returns_images_of_requested_size_with_the_real_seed(
    novita_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        images = await generate(backend, width=512, height=384, seed=1234, n=2)
    assert [(i.width, i.height, i.format) for i in images] == [(512, 384, ImageFormat.PNG)] * 2
    assert images[0].seed == 1234
    for image in images:
        assert image.to_pil().size == (512, 384)


async def test_wire_fields_match_novitas_documented_names(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    model = "dreamshaper_8_93211.safetensors"
    async with NOVITA.backend(novita_url, tmp_path, local_ca, model=model) as backend:
        await generate(backend, negative_prompt="blurry", steps=12, guidance_scale=6.0,
                       sampler="DPM++ 2M Karras", output_format="jpeg")
    submit, poll, download = knobs.requests
    assert (submit.method, submit.path) == ("POST", TXT2IMG)
    assert submit.headers["Authorization"] == f"Bearer {KEY}"
    assert set(submit.body) == {"extra", "request"}
    assert submit.body["extra"] == {"response_image_type": "jpeg"}
    assert submit.body["request"] == {
        "model_name": "dreamshaper_8_93211.safetensors", "prompt": "a red fox in snow",
        "negative_prompt": "blurry", "width": 256, "height": 192, "image_num": 1, "steps": 12,
        "seed": -1, "guidance_scale": 6.0, "sampler_name": "DPM++ 2M Karras",
    }
    assert (poll.method, poll.path, set(poll.query)) == ("GET", RESULT, {"task_id"})
    assert download.path.startswith("/files/")
    assert "Authorization" not in download.headers  # the key never travels to the storage host


async def test_task_going_queued_processing_succeed_over_several_polls_yields_the_image(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("task_slow", polls=4)
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert (image.width, image.height) == (256, 192)
    assert polls(knobs) == 4


async def test_unknown_task_status_is_not_terminal(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("task_plan", statuses=["TASK_STATUS_QUEUED", "TASK_STATUS_PAUSED", "TASK_STATUS_SUCCEED"])
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256
    assert polls(knobs) == 3


@pytest.mark.parametrize(
    ("reason", "kind"),
    [("worker crashed: CUDA out of memory", ServerError), ("invalid request.steps", Rejected)],
)
async def test_failed_task_reason_reaches_the_attempt_trail(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, reason: str,
    kind: type[BackendError],
) -> None:
    knobs.arm("task_failed", reason=reason)
    async with ImageService(NOVITA.settings(novita_url, tmp_path, local_ca)) as service:
        with pytest.raises(AllBackendsFailed) as caught:
            await service.generate(ImageRequest(prompt="fox", width=256, height=256))
    (attempt,) = caught.value.attempts
    assert attempt.outcome == kind.kind
    assert reason in (attempt.error or "")


def _running_novita_code(task: asyncio.Task[Any]) -> bool:
    return any(frame.f_code.co_filename == novita_module.__file__ for frame in task.get_stack())


async def test_never_ending_task_stops_at_the_deadline_and_leaves_nothing_polling(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("task_stuck")
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        started = time.monotonic()
        with pytest.raises(GenerationTimeout, match="TASK_STATUS_QUEUED"):
            await generate(backend, deadline_s=0.4)
        elapsed = time.monotonic() - started
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in others if _running_novita_code(t)]
        await asyncio.sleep(0.5)  # a poll sent just before the deadline may reach the server late
        seen = polls(knobs)
        await asyncio.sleep(0.5)  # a loop still polling every 0.02 s would show ~25 more
        assert polls(knobs) == seen  # nobody polls after the error
    assert 0.35 < elapsed < 0.4 + 1.5  # at the deadline, not at read_timeout_s
    assert seen >= 3


async def test_task_longer_than_read_timeout_is_generation_timeout(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("task_stuck")
    opened = NOVITA.backend(novita_url, tmp_path, local_ca, read_timeout_s=0.3)
    long_deadline = partial(generate, deadline_s=30)
    await fails(opened, long_deadline, GenerationTimeout, within_s=0.3 + 0.5)


async def test_transient_poll_errors_are_polled_through(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=503, count=2, path=RESULT)
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256
    assert polls(knobs) == 3


async def test_auth_error_while_polling_ends_the_attempt(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=401, path=RESULT)
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        with pytest.raises(AuthFailed):
            await generate(backend)
    assert polls(knobs) == 1


# --- the error table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "kind"),
    [
        (400, None, Rejected),
        (401, None, AuthFailed),
        (403, None, AuthFailed),
        (429, None, RateLimited),
        (500, None, ServerError),
        (502, None, ServerError),
        (503, None, Unavailable),
        (504, None, GenerationTimeout),
        (400, "BILLING_BALANCE_NOT_ENOUGH", QuotaExhausted),
        (403, "NOT_ENOUGH_BALANCE", QuotaExhausted),
        (403, "INVALID_API_KEY", AuthFailed),
        (400, "MISSING_API_KEY", AuthFailed),
        (400, "ILLEGAL_PROMPT", ContentFiltered),
    ],
)
async def test_submit_status_maps_to_the_right_kind(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, status: int,
    reason: str | None, kind: type[BackendError],
) -> None:
    body = novita_emulator.error_body(status, "told to fail", reason)
    knobs.arm("status", status=status, body=body, path=TXT2IMG)
    opened = NOVITA.backend(novita_url, tmp_path, local_ca)
    error = await fails(opened, generate, BackendError)
    assert type(error) is kind
    assert error.status == status
    assert body["reason"] in str(error)


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(25, 31))
async def test_rate_limited_reads_retry_after(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    opened = NOVITA.backend(novita_url, tmp_path, local_ca)
    retry_after.check(await fails(opened, generate, RateLimited))


async def test_parameters_novita_refuses_are_rejected_naming_the_field(
    novita_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        with pytest.raises(Rejected, match="request.width"):
            await generate(backend, width=64)
        with pytest.raises(Rejected, match="sampler_name"):
            await generate(backend, sampler="No Such Sampler")


async def test_expired_image_url_is_bad_response(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("url_expired")
    opened = NOVITA.backend(novita_url, tmp_path, local_ca)
    error = await fails(opened, generate, BadResponse, match="expired")
    assert error.status == 403


async def test_image_that_is_no_image_is_bad_response(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    opened = NOVITA.backend(novita_url, tmp_path, local_ca)
    await fails(opened, generate, BadResponse, match="not a PNG")


async def test_50_mb_image_body_is_cut_off_at_max_image_bytes(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image", size=50 * 1024 * 1024)
    opened = NOVITA.backend(novita_url, tmp_path, local_ca, max_image_bytes=2 * 1024 * 1024)
    await fails(opened, generate, BadResponse, match="max_image_bytes")


# --- network faults --------------------------------------------------------------------------


async def test_stalled_submit_is_generation_timeout_within_read_timeout(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall", path=TXT2IMG)
    opened = NOVITA.backend(novita_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


async def test_reset_before_the_answer_is_connect_failed(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("reset", path=TXT2IMG)
    await fails(NOVITA.backend(novita_url, tmp_path, local_ca), generate, ConnectFailed)


async def test_tls_black_hole_is_handshake_timeout_within_connect_timeout(
    blackhole_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = NOVITA.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


# --- probe, config, secrets ------------------------------------------------------------------


async def test_probe_reports_the_credit_balance(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with NOVITA.backend(novita_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=2)
    assert health.ok, health.last_error
    assert "credit balance $12.35" in (health.detail or "")
    assert [r.path for r in knobs.requests] == ["/v3/user"]


async def test_probe_with_a_refused_key_is_auth_failed(
    novita_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with NOVITA.backend(novita_url, tmp_path, local_ca, secret="sk_wrong") as backend:
        health = await backend.probe(timeout=2)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")


def test_missing_api_key_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NOVITA_KEY_FOR_TESTS"):
        make_settings([{"name": "novita", "kind": "novita", "api_key_env": "NOVITA_KEY_FOR_TESTS"}],
                      environ={}, tmp_path=tmp_path)


def test_novita_api_key_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"NOVITA_API_KEY": KEY}, dotenv=False)
    assert [b.kind for b in settings.backends][:1] == ["novita"]


async def test_api_key_never_appears_in_logs_or_errors(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with NOVITA.serve(knobs, local_ca, api_key="sk_the-emulators-own-key") as url:
        settings = NOVITA.settings(url, tmp_path, local_ca)
        request = ImageRequest(prompt="fox", width=256, height=256)
        _, shown = await shown_after_refused_secret(settings, request)
    assert KEY not in shown  # the failure was logged, without the key


async def test_cli_generate_through_the_novita_emulator(
    novita_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    config = write_config(
        tmp_path,
        f'[[backend]]\nname = "novita"\nkind = "novita"\nbase_url = "{novita_url}"\n'
        f'ca_bundle = "{local_ca.ca_file}"\npoll_interval_s = 0.05\n',
    )
    doc = await cli_generate(
        "a red fox in snow", "--backend", "novita", "--width", "320", "--height", "256",
        "--seed", "9", config=config, env={"NOVITA_API_KEY": KEY}, cwd=tmp_path, secret=KEY,
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (320, 256, 9)  # file checked too


# --- progress ------------------------------------------------------------------------------


async def test_a_listener_sees_the_task_queued_then_its_progress_percent(
    novita_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("task_slow", polls=4)  # QUEUED, PROCESSING, PROCESSING, SUCCEED
    settings = NOVITA.settings(novita_url, tmp_path, local_ca)
    async with ImageService(settings) as service:
        events = [e async for e in service.stream(ImageRequest(**NOVITA.request))]
    told = [(e.type, getattr(e, "fraction", None), e.eta_s) for e in events
            if isinstance(e, QueuedEvent | ProgressEvent)]
    assert told == [("queued", None, 4.0), ("progress", 0.33, 2.0), ("progress", 0.67, 1.0)]
    assert events[-1].type == "completed"


def test_task_progress_reads_percent_and_eta_and_tolerates_their_absence() -> None:
    body = {"task": {"status": "TASK_STATUS_PROCESSING", "progress_percent": 40, "eta": 3}}
    assert task_progress(body) == ("TASK_STATUS_PROCESSING", 0.4, 3.0)
    assert task_progress({"task": {"status": "TASK_STATUS_QUEUED"}}) == ("TASK_STATUS_QUEUED", None, None)
    assert task_progress({"nothing": 1}) == ("", None, None)
