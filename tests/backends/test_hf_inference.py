"""The Hugging Face Inference backend against its emulator, over real HTTPS on loopback.

The emulator checks the Bearer token, the body's field names and types, and answers raw
image bytes; faults are real (a silent TLS listener, an RST, a stall). Timeouts are
fractions of a second, set through the same config keys users set.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.hf_inference import (
    HFInferenceBackend,
    build_request,
    error_from_response,
    probe_url,
)
from imagegate.backends.registry import load_settings
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConfigError,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import ImageFormat, ImageRequest
from imagegate.testing import Knobs, LocalCA
from imagegate.testing import hf_inference as hf_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

TOKEN = "hf_emulatorSECRETtoken123"
MODEL = "black-forest-labs/FLUX.1-schnell"
GEN_PATH = f"/hf-inference/models/{MODEL}"

HF = BackendCase(
    name="hf", kind="hf_inference", cls=HFInferenceBackend, create_app=hf_emulator.create_app,
    env_var="HF_TOKEN", secret=TOKEN,
    request={"prompt": "a lighthouse at dusk", "width": 64, "height": 64},
)
generate = HF.generate


@pytest.fixture
async def hf_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with HF.serve(knobs, local_ca) as url:
        yield url


def generation_requests(knobs: Knobs) -> list[Any]:
    return [r for r in knobs.requests if r.path.startswith("/hf-inference/")]


# --- happy path and wire fields ----------------------------------------------------------------


async def test_generate_returns_png_of_requested_size_and_seed(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=512, height=384, seed=7)
    assert (image.format, image.width, image.height, image.seed) == (ImageFormat.PNG, 512, 384, 7)
    assert image.to_pil().size == (512, 384)
    assert image.info == {"model": MODEL, "provider": "hf-inference"}


async def test_wire_fields_match_the_hf_inference_api(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        await generate(backend, negative_prompt="blurry", steps=4, guidance_scale=3.5, seed=11)
    (req,) = generation_requests(knobs)
    assert (req.method, req.path) == ("POST", GEN_PATH)
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"
    assert req.headers["Accept"] == "image/png"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == {
        "inputs": "a lighthouse at dusk",
        "parameters": {
            "negative_prompt": "blurry", "width": 64, "height": 64,
            "num_inference_steps": 4, "guidance_scale": 3.5, "seed": 11,
        },
    }


def test_build_request_leaves_out_unset_parameters() -> None:
    body = build_request(ImageRequest(prompt="p", width=64, height=128), seed=5)
    assert body == {"inputs": "p", "parameters": {"width": 64, "height": 128, "seed": 5}}


async def test_n_3_makes_three_calls_with_consecutive_seeds(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        images = await generate(backend, n=3, seed=100)
    assert [i.seed for i in images] == [100, 101, 102]
    assert sorted(r.body["parameters"]["seed"] for r in generation_requests(knobs)) == [100, 101, 102]
    assert len({i.data for i in images}) == 3


async def test_without_a_seed_one_is_drawn_sent_and_reported(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    (req,) = generation_requests(knobs)
    assert image.seed == req.body["parameters"]["seed"]


async def test_request_model_overrides_the_config_model_in_the_path(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca, model="emulator/tiny") as backend:
        await generate(backend)
        await generate(backend, model="black-forest-labs/FLUX.1-dev")
    paths = [r.path for r in generation_requests(knobs)]
    assert paths == ["/hf-inference/models/emulator/tiny", "/hf-inference/models/black-forest-labs/FLUX.1-dev"]


async def test_png_bytes_labelled_image_jpeg_are_sniffed_as_png(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("mislabel")
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.format is ImageFormat.PNG


async def test_jpeg_answer_is_returned_as_jpeg(hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("jpeg")
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=96, height=64)
    assert (image.format, image.width, image.height) == (ImageFormat.JPEG, 96, 64)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (400, {}, {"error": "bad"}, Rejected),
        (401, {}, {"error": "Invalid credentials in Authorization header"}, AuthFailed),
        (402, {}, {"error": "Payment required"}, QuotaExhausted),
        (403, {"X-Error-Code": "NOT_ENOUGH_BALANCE"}, {"error": "no credits"}, QuotaExhausted),
        (404, {}, "Not Found", Rejected),
        (410, {}, {"error": "no longer supported"}, Rejected),
        (422, {}, {"error": ["Input validation error"]}, Rejected),
        (429, {}, {"error": "rate limit"}, RateLimited),
        (500, {}, {"error": "CUDA out of memory"}, ServerError),
        (503, {}, {"error": "loading", "estimated_time": 12.5}, Unavailable),
        (504, {}, {"error": "timeout"}, GenerationTimeout),
    ],
)
async def test_http_status_maps_to_error_kind(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA,
    status: int, headers: dict[str, str], body: Any, expected: type[BackendError],
) -> None:
    knobs.arm("status", status=status, headers=headers, body=body)
    error = await fails(HF.backend(hf_url, tmp_path, local_ca), generate, expected)
    assert type(error) is expected
    assert error.status == status
    assert error.backend == "hf"


async def test_model_loading_is_unavailable_with_estimated_time_as_retry_after(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("loading", estimated_time=20)
    opened = HF.backend(hf_url, tmp_path, local_ca)
    error = await fails(opened, generate, Unavailable, match="currently loading")
    assert error.retry_after == 20.0


async def test_not_enough_balance_is_quota_exhausted(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("no_balance")
    await fails(HF.backend(hf_url, tmp_path, local_ca), generate, QuotaExhausted, match="credits")


async def test_model_not_served_is_rejected_naming_the_model(
    hf_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = HF.backend(hf_url, tmp_path, local_ca)
    other_model = partial(generate, model="nobody/model")
    error = await fails(opened, other_model, Rejected, match="nobody/model")
    assert error.status == 404


def test_410_says_the_host_is_retired_and_where_to_go() -> None:
    error = error_from_response(410, b'{"error": "gone"}', {}, backend="hf", model=MODEL)
    assert isinstance(error, Rejected)
    assert "retired" in str(error) and "router.huggingface.co" in str(error)


def test_retry_after_header_wins_over_estimated_time() -> None:
    body = json.dumps({"error": "loading", "estimated_time": 50}).encode()
    error = error_from_response(503, body, {"Retry-After": "3"}, backend="hf", model=MODEL)
    assert isinstance(error, Unavailable) and error.retry_after == 3.0


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(27, 31))
async def test_rate_limited_reads_retry_after(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    retry_after.check(await fails(HF.backend(hf_url, tmp_path, local_ca), generate, RateLimited))


async def test_wrong_token_is_auth_failed(hf_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = HF.backend(hf_url, tmp_path, local_ca, secret="hf_wrong")
    await fails(opened, generate, AuthFailed, match="Invalid credentials")


async def test_body_that_is_not_an_image_is_bad_response(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(HF.backend(hf_url, tmp_path, local_ca), generate, BadResponse, match="not a PNG")


async def test_image_larger_than_max_image_bytes_is_bad_response(
    hf_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = HF.backend(hf_url, tmp_path, local_ca, max_image_bytes=1024)
    too_big = partial(generate, width=1024, height=1024)
    await fails(opened, too_big, BadResponse, match="max_image_bytes")


async def test_tls_black_hole_is_handshake_timeout_within_connect_budget(
    blackhole_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = HF.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


async def test_reset_before_the_response_is_connect_failed(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("reset")
    await fails(HF.backend(hf_url, tmp_path, local_ca), generate, ConnectFailed)


async def test_stalled_answer_is_generation_timeout_within_read_budget(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall")
    opened = HF.backend(hf_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


async def test_one_failed_call_of_n_fails_the_request_and_cancels_the_others(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=429, headers={"Retry-After": "2"})
    opened = HF.backend(hf_url, tmp_path, local_ca)
    error = await fails(opened, partial(generate, n=3, seed=1), RateLimited)
    assert error.retry_after == 2.0


# --- probe -------------------------------------------------------------------------------------


def test_probe_url_goes_to_the_hub_for_the_public_router_and_to_base_url_otherwise() -> None:
    hub = "https://huggingface.co/api/models/a/b?expand=inferenceProviderMapping"
    assert probe_url("https://router.huggingface.co", "a/b", None) == hub
    assert probe_url("https://127.0.0.1:9", "a/b", None).startswith("https://127.0.0.1:9/api/models/a/b?")
    assert probe_url("https://x", "a/b", "https://hub/api/whoami-v2") == "https://hub/api/whoami-v2"


async def test_probe_reports_the_model_served_with_timings(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=5)
    assert health.ok, health.last_error
    assert health.detail == f"hf-inference serves {MODEL} (live)"
    assert "connect_s" in health.timings and "first_byte_s" in health.timings
    (req,) = knobs.requests
    assert (req.path, req.query) == (f"/api/models/{MODEL}", {"expand": "inferenceProviderMapping"})
    assert req.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_probe_with_wrong_token_reports_auth_failed(hf_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca, secret="hf_wrong") as backend:
        health = await backend.probe(timeout=5)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")


async def test_probe_of_an_unknown_model_reports_rejected(hf_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca, model="nobody/model") as backend:
        health = await backend.probe(timeout=5)
    assert (health.ok, health.last_error_kind) == (False, "rejected")


async def test_probe_uses_whoami_url_when_set(hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with HF.backend(hf_url, tmp_path, local_ca, whoami_url=f"{hf_url}/api/whoami-v2") as backend:
        health = await backend.probe(timeout=5)
    assert health.ok and health.detail == "token accepted (user emulator-user)"
    assert [r.path for r in knobs.requests] == ["/api/whoami-v2"]


# --- config and secrets ------------------------------------------------------------------------


def test_hf_token_alone_enables_the_backend_without_a_config_file() -> None:
    settings = load_settings(None, environ={"HF_TOKEN": TOKEN}, dotenv=False)
    (backend,) = [b for b in settings.backends if b.kind == "hf_inference"]
    assert backend.base_url == "https://router.huggingface.co"
    assert settings.secret(backend.name, "api_key") == TOKEN


def test_missing_token_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        make_settings([{"name": "hf", "kind": "hf_inference"}], environ={}, tmp_path=tmp_path)


def test_retired_api_inference_host_is_a_config_error(tmp_path: Path) -> None:
    table = {"name": "hf", "kind": "hf_inference", "base_url": "https://api-inference.huggingface.co"}
    with pytest.raises(ConfigError, match="410 Gone") as info:
        make_settings([table], environ={"HF_TOKEN": TOKEN}, tmp_path=tmp_path)
    assert "base_url" in str(info.value) and "router.huggingface.co" in str(info.value)


async def test_token_never_reaches_logs_or_error_messages_even_when_echoed(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=401, body={"error": f"token {TOKEN} is not valid"})
    settings = HF.settings(hf_url, tmp_path, local_ca)
    request = ImageRequest(prompt="p", width=64, height=64)
    _, shown = await shown_after_refused_secret(settings, request)
    assert TOKEN not in shown


# --- the CLI -----------------------------------------------------------------------------------


async def test_cli_generate_with_backend_writes_the_image(
    hf_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    config = write_config(
        tmp_path,
        f'[[backend]]\nname = "hf-emu"\nkind = "hf_inference"\nbase_url = "{hf_url}"\n'
        f'ca_bundle = "{local_ca.ca_file}"\nconnect_timeout_s = 2.0\n',
    )
    doc = await cli_generate(
        "a lighthouse", "--backend", "hf-emu", "--width", "128", "--height", "96", "--seed", "5",
        config=config, env={"HF_TOKEN": TOKEN}, cwd=tmp_path, secret=TOKEN,
    )
    (image,) = doc["images"]  # its file opens at 128x96
    assert (doc["backend"], image["width"], image["height"], image["seed"]) == ("hf-emu", 128, 96, 5)
