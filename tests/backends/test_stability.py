"""The Stability AI backend against the Stability emulator, over real HTTPS on loopback.

Every fault is real: a TLS listener that never answers, an RST, a stalled answer, a 50 MB body.
Timeouts are fractions of a second, set through the same config keys users set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from imagegate.backends.registry import load_settings
from imagegate.backends.stability import (
    StabilityBackend,
    build_form,
    error_for_response,
    nearest_aspect_ratio,
    parse_response,
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
    Unavailable,
)
from imagegate.models import ImageFormat, ImageRequest
from imagegate.testing import Knobs, LocalCA
from imagegate.testing import stability as stability_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

KEY = "sk-stability-test-key-8d2e4a61"
GENERATE = "/v2beta/stable-image/generate/"

STABILITY = BackendCase(
    name="stability", kind="stability", cls=StabilityBackend,
    create_app=stability_emulator.create_app, env_var="STABILITY_API_KEY", secret=KEY,
    table={"connect_timeout_s": 5.0, "read_timeout_s": 5.0},
    request={"prompt": "a lighthouse on a cliff"},
)
generate = STABILITY.generate


@pytest.fixture
async def stability_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with STABILITY.serve(knobs, local_ca) as url:
        yield url


# --- pure translation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "ratio"),
    [
        (1024, 1024, "1:1"), (1344, 768, "16:9"), (1920, 1080, "16:9"), (512, 768, "2:3"),
        (2048, 880, "21:9"), (640, 1536, "9:21"), (1152, 896, "5:4"), (896, 1152, "4:5"),
        (1216, 832, "3:2"), (768, 1344, "9:16"), (2048, 64, "21:9"),
    ],
)
def test_nearest_aspect_ratio(width: int, height: int, ratio: str) -> None:
    assert nearest_aspect_ratio(width, height) == ratio


def test_build_form_random_seed_and_core_fields() -> None:
    form = dict(build_form(ImageRequest(prompt="p", width=1344, height=768), engine="core", model=None))
    assert form == {"prompt": "p", "aspect_ratio": "16:9", "seed": "0", "output_format": "png"}


def test_build_form_sd3_sends_model_and_asks_png_for_webp() -> None:
    request = ImageRequest(prompt="p", negative_prompt="n", output_format="webp")
    form = dict(build_form(request, engine="sd3", model="sd3.5-medium"))
    assert (form["model"], form["output_format"], form["negative_prompt"]) == ("sd3.5-medium", "png", "n")


def test_build_form_leaves_out_negative_prompt_for_sd3_large_turbo() -> None:
    request = ImageRequest(prompt="p", negative_prompt="n")
    assert "negative_prompt" not in dict(build_form(request, engine="sd3", model="sd3-large-turbo"))


def test_seed_above_stabilitys_range_is_rejected_before_sending() -> None:
    with pytest.raises(Rejected, match="seed"):
        build_form(ImageRequest(prompt="p", seed=2**32 - 1), engine="core", model=None)


def test_parse_response_content_filtered_is_never_a_success() -> None:
    with pytest.raises(ContentFiltered):
        parse_response(b"\x89PNG...", {"finish-reason": "CONTENT_FILTERED", "seed": "3"}, backend="s")


def test_error_json_is_kept_in_the_message() -> None:
    body = b'{"id": "abc123", "name": "bad_request", "errors": ["aspect_ratio: bad"]}'
    error = error_for_response(400, body, backend="s")
    assert isinstance(error, Rejected)
    assert str(error) == "HTTP 400: bad_request: aspect_ratio: bad (id abc123)"


# --- the happy path over HTTPS ---------------------------------------------------------------


async def test_generate_returns_the_aspect_ratio_substitute_and_says_which(
    stability_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=1920, height=1080, seed=77)
    assert (image.width, image.height, image.format, image.seed) == (1344, 768, ImageFormat.PNG, 77)
    assert image.info["aspect_ratio"] == "16:9"
    assert image.info["requested_size"] == "1920x1080"
    assert image.to_pil().size == (1344, 768)


async def test_square_request_yields_a_1024_square(
    stability_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=1024, height=1024, output_format="webp")
    assert (image.width, image.height, image.format) == (1024, 1024, ImageFormat.WEBP)
    assert image.seed is not None and image.seed > 0  # seed 0 asked for a random one


async def test_wire_fields_match_stabilitys_documented_names(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca) as backend:
        await generate(backend, negative_prompt="fog", width=832, height=1216, seed=5,
                       output_format="jpeg", steps=30)
    (sent,) = knobs.requests
    assert (sent.method, sent.path) == ("POST", GENERATE + "core")
    assert sent.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert sent.headers["Accept"] == "image/*"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.body == {
        "prompt": "a lighthouse on a cliff", "negative_prompt": "fog", "aspect_ratio": "2:3",
        "seed": "5", "output_format": "jpeg",
    }


async def test_sd3_engine_sends_the_configured_model(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca, engine="sd3",
                                 model="sd3.5-large-turbo") as backend:
        (image,) = await generate(backend, output_format="webp")
    (sent,) = knobs.requests
    assert sent.path == GENERATE + "sd3"
    assert (sent.body["model"], sent.body["output_format"]) == ("sd3.5-large-turbo", "png")
    assert (image.format, image.info["model"]) == (ImageFormat.PNG, "sd3.5-large-turbo")


async def test_n_images_are_n_calls_with_consecutive_seeds(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca) as backend:
        images = await generate(backend, n=3, seed=10)
    assert sorted(i.seed for i in images if i.seed is not None) == [10, 11, 12]
    assert sorted(r.body["seed"] for r in knobs.requests) == ["10", "11", "12"]


# --- refusals and the error table ------------------------------------------------------------


async def test_content_filtered_result_is_content_filtered(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("content_filtered")
    opened = STABILITY.backend(stability_url, tmp_path, local_ca)
    await fails(opened, generate, ContentFiltered, match="CONTENT_FILTERED")


async def test_flagged_prompt_is_content_filtered(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("moderation")
    opened = STABILITY.backend(stability_url, tmp_path, local_ca)
    error = await fails(opened, generate, ContentFiltered, match="content_moderation")
    assert error.status == 403


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, Rejected), (401, AuthFailed), (402, QuotaExhausted), (403, AuthFailed),
        (404, Rejected), (413, Rejected), (422, Rejected), (429, RateLimited),
        (500, ServerError), (503, Unavailable),
    ],
)
async def test_status_maps_to_the_right_kind_keeping_the_error_json(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, status: int,
    kind: type[BackendError],
) -> None:
    body = stability_emulator.error_body(status, "told to fail")
    knobs.arm("status", status=status, body=body)
    opened = STABILITY.backend(stability_url, tmp_path, local_ca)
    error = await fails(opened, generate, BackendError)
    assert type(error) is kind
    assert error.status == status
    assert f"{body['name']}: told to fail (id {body['id']})" in str(error)


@retry_after_forms(seconds=12, date_ahead_s=60, date_range=(55, 61))
async def test_rate_limited_reads_retry_after(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    opened = STABILITY.backend(stability_url, tmp_path, local_ca)
    retry_after.check(await fails(opened, generate, RateLimited))


async def test_emulator_refuses_a_body_that_is_not_multipart(
    stability_url: str, local_ca: LocalCA
) -> None:
    async with aiohttp.ClientSession() as session, session.post(
        stability_url + GENERATE + "core", data={"prompt": "p"},  # urlencoded, not multipart
        headers={"authorization": f"Bearer {KEY}", "accept": "image/*"},
        ssl=local_ca.client_context(),
    ) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["name"] == "bad_request"
    assert "multipart/form-data" in body["errors"][0]


async def test_emulator_refuses_bad_field_values_naming_them(
    stability_url: str, local_ca: LocalCA
) -> None:
    form = aiohttp.FormData({"prompt": "p", "aspect_ratio": "7:3", "seed": "-4"},
                            default_to_multipart=True)
    async with aiohttp.ClientSession() as session, session.post(
        stability_url + GENERATE + "core", data=form,
        headers={"authorization": f"Bearer {KEY}"}, ssl=local_ca.client_context(),
    ) as resp:
        assert resp.status == 400
        errors = (await resp.json())["errors"]
    assert any(e.startswith("aspect_ratio:") for e in errors)
    assert any(e.startswith("seed:") for e in errors)


async def test_image_that_is_no_image_is_bad_response(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    opened = STABILITY.backend(stability_url, tmp_path, local_ca)
    await fails(opened, generate, BadResponse, match="not a PNG")


async def test_50_mb_body_is_cut_off_at_max_image_bytes(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image", size=50 * 1024 * 1024)
    opened = STABILITY.backend(stability_url, tmp_path, local_ca, max_image_bytes=2 * 1024 * 1024)
    await fails(opened, generate, BadResponse, match="max_image_bytes")


# --- network faults --------------------------------------------------------------------------


async def test_stalled_answer_is_generation_timeout_within_read_timeout(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall")
    opened = STABILITY.backend(stability_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


async def test_reset_before_the_answer_is_connect_failed(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("reset")
    await fails(STABILITY.backend(stability_url, tmp_path, local_ca), generate, ConnectFailed)


async def test_tls_black_hole_is_handshake_timeout_within_connect_timeout(
    blackhole_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = STABILITY.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


# --- probe, config, secrets ------------------------------------------------------------------


async def test_probe_reports_the_credit_balance(
    stability_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=2)
    assert health.ok, health.last_error
    assert health.detail == "42.5 credits"
    assert [r.path for r in knobs.requests] == ["/v1/user/balance"]


async def test_probe_with_a_refused_key_is_auth_failed(
    stability_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.backend(stability_url, tmp_path, local_ca, secret="sk-wrong") as backend:
        health = await backend.probe(timeout=2)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")
    assert "unauthorized" in (health.last_error or "")


def test_missing_api_key_variable_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="STABILITY_API_KEY"):
        make_settings([{"name": "stability", "kind": "stability"}], environ={}, tmp_path=tmp_path)


def test_stability_api_key_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"STABILITY_API_KEY": KEY}, dotenv=False)
    assert [b.kind for b in settings.backends][:1] == ["stability"]


async def test_api_key_never_appears_in_logs_or_errors(
    knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with STABILITY.serve(knobs, local_ca, api_key="sk-the-emulators-own-key") as url:
        settings = STABILITY.settings(url, tmp_path, local_ca)
        request = ImageRequest(prompt="p", width=512, height=512)
        _, shown = await shown_after_refused_secret(settings, request)
    assert KEY not in shown


async def test_cli_generate_through_the_stability_emulator(
    stability_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    config = write_config(
        tmp_path,
        f'[[backend]]\nname = "stability"\nkind = "stability"\nbase_url = "{stability_url}"\n',
    )
    doc = await cli_generate(
        "a lighthouse on a cliff", "--backend", "stability", "--width", "1344", "--height", "768",
        "--seed", "3", config=config, cwd=tmp_path, secret=KEY,
        env={"STABILITY_API_KEY": KEY, "SSL_CERT_FILE": str(local_ca.ca_file)},
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (1344, 768, 3)  # file checked too
