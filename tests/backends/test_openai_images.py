"""The OpenAI-compatible images backend against its emulator, over real HTTPS on loopback.

The emulator checks what api.openai.com checks (Bearer key, field names, n, size, unknown
parameters). One test drives the emulator with the official ``openai`` SDK to show that
emulator and backend read the same shape as the SDK (``ImagesResponse``).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.openai_images import (
    OpenAIImagesBackend,
    build_request,
    endpoint,
    error_from_response,
    model_family,
    openai_capabilities,
    parse_response,
)
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConfigError,
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
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, make_image, serve_app
from imagegate.testing import openai_images as openai_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import make_settings, write_config

KEY = "sk-emulator-SECRET-key-0123456789"
GEN_PATH = "/v1/images/generations"

OPENAI = BackendCase(
    name="oai", kind="openai", cls=OpenAIImagesBackend, create_app=openai_emulator.create_app,
    env_var="OPENAI_API_KEY", secret=KEY,
    request={"prompt": "a lighthouse at dusk", "width": 64, "height": 64},
)
generate = OPENAI.generate


@pytest.fixture
async def openai_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with OPENAI.serve(knobs, local_ca) as url:
        yield url


def bodies(knobs: Knobs) -> list[Any]:
    return [r.body for r in knobs.requests if r.path == GEN_PATH]


# --- happy path and wire fields ----------------------------------------------------------------


async def test_generate_returns_png_of_requested_size_and_seed(
    openai_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with OPENAI.backend(openai_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=512, height=384, seed=9)
    assert (image.format, image.width, image.height, image.seed) == (ImageFormat.PNG, 512, 384, 9)
    assert image.to_pil().size == (512, 384)


async def test_wire_fields_match_the_openai_images_api(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with OPENAI.backend(openai_url, tmp_path, local_ca, model="dall-e-2") as backend:
        images = await generate(backend, n=2, width=256, height=256, seed=3, steps=4, negative_prompt="fog")
    (req,) = [r for r in knobs.requests if r.path == GEN_PATH]
    assert req.method == "POST"
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert req.headers["Content-Type"] == "application/json"
    assert req.body == {
        "model": "dall-e-2", "prompt": "a lighthouse at dusk", "n": 2, "size": "256x256",
        "response_format": "b64_json", "seed": 3, "steps": 4, "negative_prompt": "fog",
    }
    assert [(i.width, i.height, i.seed) for i in images] == [(256, 256, None), (256, 256, None)]


def test_gpt_image_models_get_no_response_format_and_output_format_only_when_not_png() -> None:
    png = build_request(ImageRequest(prompt="p"), model="gpt-image-1", extensions=False)
    webp = build_request(ImageRequest(prompt="p", output_format=ImageFormat.WEBP), model="gpt-image-1",
                         extensions=False)
    assert "response_format" not in png and "output_format" not in png
    assert webp["output_format"] == "webp" and "response_format" not in webp


def test_extensions_and_model_are_left_out_when_unset_or_disabled() -> None:
    full = ImageRequest(prompt="p", seed=1, negative_prompt="n", steps=4, guidance_scale=2.0,
                        output_format=ImageFormat.JPEG)
    assert build_request(full, model=None, extensions=False) == {
        "prompt": "p", "n": 1, "size": "1024x1024", "response_format": "b64_json"
    }
    assert build_request(full, model="m", extensions=True) == {
        "prompt": "p", "n": 1, "size": "1024x1024", "model": "m", "response_format": "b64_json",
        "output_format": "jpeg", "seed": 1, "negative_prompt": "n", "steps": 4, "guidance_scale": 2.0,
    }


def test_base_url_ending_in_v1_gets_no_second_v1() -> None:
    assert endpoint("https://h/v1", GEN_PATH) == "https://h/v1/images/generations"
    assert endpoint("https://h", GEN_PATH) == "https://h/v1/images/generations"


async def test_base_url_with_v1_reaches_the_server(openai_url: str, knobs: Knobs, tmp_path: Path,
                                                   local_ca: LocalCA) -> None:
    async with OPENAI.backend(openai_url + "/v1", tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 64 and [r.path for r in knobs.requests] == [GEN_PATH]


async def test_url_answers_are_downloaded_with_the_key_on_the_same_origin(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("url_answer")
    async with OPENAI.backend(openai_url, tmp_path, local_ca) as backend:
        images = await generate(backend, n=2, width=96, height=64)
    assert [(i.width, i.height) for i in images] == [(96, 64), (96, 64)]
    downloads = [r for r in knobs.requests if r.path.startswith("/files/")]
    assert len(downloads) == 2 and all(r.headers.get("Authorization") == f"Bearer {KEY}" for r in downloads)


async def test_url_on_another_host_is_downloaded_without_the_key(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("url_answer", host="localhost")  # same server, another origin: like a presigned URL
    # localhost is a private address: fetched only because download_hosts lists it
    async with OPENAI.backend(openai_url, tmp_path, local_ca, download_hosts=["localhost"]) as backend:
        (image,) = await generate(backend)
    assert image.width == 64
    (download,) = [r for r in knobs.requests if r.path.startswith("/files/")]
    assert "Authorization" not in download.headers


async def test_url_on_another_private_host_is_refused_unless_listed(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("url_answer", host="localhost")
    opened = OPENAI.backend(openai_url, tmp_path, local_ca)
    await fails(opened, generate, BadResponse, match="refused: localhost resolves to no public address")
    assert not [r for r in knobs.requests if r.path.startswith("/files/")]


def test_parse_response_reads_data_urls_and_item_seeds() -> None:
    png = make_image(8, 8)
    body = {"data": [{"url": "data:image/png;base64," + base64.b64encode(png).decode(), "seed": 42,
                      "revised_prompt": "a better prompt"}]}
    (item,) = parse_response(body, backend="oai", sent_seed=1)
    assert (item.data, item.seed, item.info) == (png, 42, {"revised_prompt": "a better prompt"})


@pytest.mark.parametrize("body", [{}, {"data": []}, {"data": [{}]}, {"data": [{"b64_json": "!!"}]}, []])
def test_parse_response_refuses_malformed_bodies_as_bad_response(body: Any) -> None:
    with pytest.raises(BadResponse):
        parse_response(body, backend="oai", sent_seed=None)


async def test_official_openai_sdk_reads_the_emulator_answer(
    openai_url: str, local_ca: LocalCA
) -> None:
    httpx = pytest.importorskip("httpx")
    openai = pytest.importorskip("openai")
    async with httpx.AsyncClient(verify=local_ca.client_context()) as http:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=openai_url + "/v1", http_client=http, max_retries=0)
        response = await client.images.generate(
            prompt="a lighthouse", model="dall-e-2", n=1, size="256x256", response_format="b64_json"
        )
        with pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(api_key="sk-wrong", base_url=openai_url + "/v1", http_client=http,
                                     max_retries=0).images.generate(prompt="x")
    assert response.data and response.data[0].b64_json
    (item,) = parse_response(response.model_dump(), backend="oai", sent_seed=None)
    assert item.data is not None and item.data.startswith(b"\x89PNG")


async def test_another_imagegate_serves_this_backend_with_the_extension_fields(
    a1111_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    from imagegate.server import ServerOptions

    from tests.server.kit import a1111_settings, gateway

    (tmp_path / "upstream").mkdir()
    upstream = a1111_settings(a1111_url, tmp_path / "upstream")
    async with gateway(upstream, ServerOptions(api_keys=(KEY,))) as (url, _app):
        table = {"name": "oai", "kind": "openai", "base_url": url}
        settings = make_settings([table], environ={"OPENAI_API_KEY": KEY}, tmp_path=tmp_path)
        async with ImageService(settings) as service:
            result = await service.generate(
                ImageRequest(prompt="a lighthouse", width=128, height=64, seed=21, steps=5, negative_prompt="fog")
            )
    (image,) = result.images
    assert (image.width, image.height, image.seed) == (128, 64, 21)
    (txt2img,) = [r.body for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]
    assert (txt2img["seed"], txt2img["steps"], txt2img["negative_prompt"]) == (21, 5, "fog")


# --- errors ------------------------------------------------------------------------------------


def _err(code: str | None, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": f"emulated {code}", "type": type_, "param": None, "code": code}}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, _err("invalid_value"), Rejected),
        (400, _err("content_policy_violation", "image_generation_user_error"), ContentFiltered),
        (400, _err("moderation_blocked"), ContentFiltered),
        (400, _err("billing_hard_limit_reached"), QuotaExhausted),
        (401, _err("invalid_api_key"), AuthFailed),
        (402, _err(None), QuotaExhausted),
        (403, _err("unsupported_country_region_territory"), AuthFailed),
        (404, _err("model_not_found"), Rejected),
        (429, _err("rate_limit_exceeded", "requests"), RateLimited),
        (429, _err("insufficient_quota", "insufficient_quota"), QuotaExhausted),
        (500, _err(None, "server_error"), ServerError),
        (502, "<html>Bad gateway</html>", ServerError),
        (503, _err(None, "server_error"), Unavailable),
        (504, "gateway timeout", GenerationTimeout),
    ],
)
async def test_http_status_maps_to_error_kind_and_keeps_the_message(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA,
    status: int, body: Any, expected: type[BackendError],
) -> None:
    knobs.arm("status", status=status, body=body)
    error = await fails(OPENAI.backend(openai_url, tmp_path, local_ca), generate, expected)
    assert type(error) is expected and error.status == status
    if isinstance(body, dict):
        assert body["error"]["message"] in str(error)


async def test_content_policy_rejection_from_the_emulator_is_content_filtered(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("content_filter")
    opened = OPENAI.backend(openai_url, tmp_path, local_ca)
    await fails(opened, generate, ContentFiltered, match="safety system")


async def test_insufficient_quota_429_is_quota_exhausted_not_rate_limited(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("insufficient_quota")
    opened = OPENAI.backend(openai_url, tmp_path, local_ca)
    await fails(opened, generate, QuotaExhausted, match="quota")


async def test_emulator_refuses_invalid_fields_as_rejected_naming_the_field(
    openai_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with OPENAI.backend(openai_url, tmp_path, local_ca, model="gpt-image-1", send_extensions=False) as backend:
        (image,) = await generate(backend, width=1024, height=1536)  # no response_format: accepted
        assert (image.width, image.height) == (1024, 1536)
    opened = OPENAI.backend(openai_url, tmp_path, local_ca, model="no-such-model")
    await fails(opened, generate, Rejected, match="model")
    opened = OPENAI.backend(openai_url, tmp_path, local_ca, model="gpt-image-1")
    error = await fails(opened, generate, Rejected, match="Supported values are: '1024x1024'")
    assert error.status == 400  # 64x64 is no GPT image size (the router never sends it: adapt)


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(27, 31))
async def test_rate_limited_reads_retry_after(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    opened = OPENAI.backend(openai_url, tmp_path, local_ca)
    retry_after.check(await fails(opened, generate, RateLimited))


def test_retry_after_ms_wins_over_retry_after() -> None:
    error = error_from_response(429, b"{}", {"retry-after-ms": "1500", "Retry-After": "9"}, backend="oai")
    assert isinstance(error, RateLimited) and error.retry_after == 1.5


async def test_wrong_key_is_auth_failed(openai_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = OPENAI.backend(openai_url, tmp_path, local_ca, secret="sk-wrong-key-0000")
    await fails(opened, generate, AuthFailed, match="Incorrect API key")


async def test_b64_that_is_not_an_image_is_bad_response(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(OPENAI.backend(openai_url, tmp_path, local_ca), generate, BadResponse)


async def test_tls_black_hole_is_handshake_timeout_within_connect_budget(
    blackhole_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    opened = OPENAI.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


async def test_stalled_body_is_generation_timeout_within_read_budget(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall_body")
    opened = OPENAI.backend(openai_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


# --- probe -------------------------------------------------------------------------------------


async def test_probe_lists_models_with_the_key(openai_url: str, knobs: Knobs, tmp_path: Path,
                                               local_ca: LocalCA) -> None:
    async with OPENAI.backend(openai_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=5)
    assert health.ok and health.detail is not None and health.detail.startswith("7 models: gpt-image-1")
    (req,) = knobs.requests
    assert (req.path, req.headers["Authorization"]) == ("/v1/models", f"Bearer {KEY}")


async def test_probe_with_wrong_key_reports_auth_failed(openai_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    async with OPENAI.backend(openai_url, tmp_path, local_ca, secret="sk-nope-nope") as b:
        health = await b.probe(timeout=5)
    assert (health.ok, health.last_error_kind) == (False, "auth_failed")


async def test_probe_of_a_server_without_a_model_list_is_still_reachable(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=404, path="/v1/models")
    async with OPENAI.backend(openai_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=5)
    assert health.ok and "no model list" in (health.detail or "")


# --- config and secrets ------------------------------------------------------------------------


def test_missing_key_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    table = {"name": "oai", "kind": "openai", "base_url": "https://example.invalid", "api_key_env": "MY_IMG_KEY"}
    with pytest.raises(ConfigError, match="MY_IMG_KEY"):
        make_settings([table], environ={}, tmp_path=tmp_path)


async def test_optional_key_unset_sends_no_authorization_header(knobs: Knobs, local_ca: LocalCA,
                                                                tmp_path: Path) -> None:
    app = openai_emulator.create_app(knobs=knobs, api_key=None)
    async with (
        serve_app(app, tls=local_ca) as url,
        OPENAI.backend(url, tmp_path, local_ca, environ={}, api_key_required=False) as backend,
    ):
        (image,) = await generate(backend)
    assert image.width == 64
    assert "Authorization" not in knobs.requests[0].headers


async def test_key_never_reaches_logs_or_error_messages_even_when_echoed(
    openai_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("status", status=401, body={"error": {"message": f"Incorrect API key provided: {KEY}",
                                                    "type": "invalid_request_error", "code": "invalid_api_key"}})
    settings = OPENAI.settings(openai_url, tmp_path, local_ca)
    request = ImageRequest(prompt="p", width=64, height=64)
    _, shown = await shown_after_refused_secret(settings, request)
    assert KEY not in shown


# --- the CLI -----------------------------------------------------------------------------------


async def test_cli_generate_with_backend_writes_the_image(
    openai_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    config = write_config(
        tmp_path,
        f'[[backend]]\nname = "oai-emu"\nkind = "openai"\nbase_url = "{openai_url}"\n'
        f'api_key_env = "EMU_OPENAI_KEY"\nca_bundle = "{local_ca.ca_file}"\n',
    )
    doc = await cli_generate(
        "a lighthouse", "--backend", "oai-emu", "--width", "128", "--height", "96", "-n", "2",
        config=config, env={"EMU_OPENAI_KEY": KEY}, cwd=tmp_path, secret=KEY,
    )
    assert doc["backend"] == "oai-emu"
    assert [(i["width"], i["height"]) for i in doc["images"]] == [(128, 96), (128, 96)]  # files too


# --- model families and the api.openai.com defaults ------------------------------------------


@pytest.mark.parametrize(
    ("model", "official", "family"),
    [
        ("dall-e-2", False, "dall-e-2"), ("dall-e-3", True, "dall-e-3"),
        ("gpt-image-1", False, "gpt-image"), ("gpt-image-1.5", False, "gpt-image"),
        ("chatgpt-image-latest", False, "gpt-image"), ("CHATGPT-IMAGE-latest", True, "gpt-image"),
        ("gpt-image-2", True, "gpt-image"),
        ("some-future-image-model", True, "gpt-image"),  # OpenAI serves no other family
        ("some-future-image-model", False, None),  # another server's own model: no rules
        (None, True, "dall-e-2"), (None, False, None),
    ],
)
def test_model_family(model: str | None, official: bool, family: str | None) -> None:
    assert model_family(model, official=official) == family


def test_chatgpt_image_and_any_non_dall_e_name_on_api_openai_com_get_no_response_format() -> None:
    request = ImageRequest(prompt="p")
    assert "response_format" not in build_request(request, model="chatgpt-image-latest", extensions=False)
    assert "response_format" not in build_request(request, model="new-model", extensions=False, official=True)
    assert build_request(request, model="new-model", extensions=False)["response_format"] == "b64_json"
    assert build_request(request, model="dall-e-3", extensions=False, official=True)["response_format"] == "b64_json"


@pytest.mark.parametrize(
    ("environ", "extensions"),
    [
        ({"OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "sk-x"}, False),
        ({"OPENAI_BASE_URL": "https://gateway.example.com/v1"}, True),
        ({"OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "sk-x",
          "OPENAI_SEND_EXTENSIONS": "true"}, True),
        ({"OPENAI_BASE_URL": "https://gateway.example.com", "OPENAI_SEND_EXTENSIONS": "0"}, False),
    ],
)
def test_send_extensions_is_off_for_api_openai_com_even_from_the_environment_alone(
    environ: dict[str, str], extensions: bool
) -> None:
    from imagegate.backends.registry import load_settings

    (backend,) = load_settings(None, environ=environ, dotenv=False).backends
    assert backend.extensions is extensions  # type: ignore[attr-defined]


def test_send_extensions_set_in_the_config_wins(tmp_path: Path) -> None:
    settings = OPENAI.settings("https://api.openai.com", tmp_path, send_extensions=True)
    assert settings.backends[0].extensions is True  # type: ignore[attr-defined]
    settings = OPENAI.settings("https://api.openai.com", tmp_path)
    assert settings.backends[0].extensions is False  # type: ignore[attr-defined]


def test_each_family_has_its_sizes_images_per_call_and_prompt_length() -> None:
    dalle2 = openai_capabilities("dall-e-2", official=True, extensions=False)
    dalle3 = openai_capabilities("dall-e-3", official=True, extensions=False)
    gpt = openai_capabilities("chatgpt-image-latest", official=True, extensions=False)
    assert (dalle2.sizes, dalle2.max_n, dalle2.prompt_max) == (((256, 256), (512, 512), (1024, 1024)), 10, 1000)
    assert (dalle3.sizes, dalle3.max_n, dalle3.prompt_max) == (
        ((1024, 1024), (1792, 1024), (1024, 1792)), 1, 4000)
    assert (gpt.sizes, gpt.max_n, gpt.formats) == (
        ((1024, 1024), (1536, 1024), (1024, 1536)), 10, ("png", "jpeg", "webp"))
    assert dalle3.takes == ("size", "model")  # api.openai.com: no seed, steps, ...
    other = openai_capabilities("flux-dev", official=False, extensions=True)
    assert other.sizes is None and "seed" in other.takes and other.formats is None
