"""The Together backend against the Together emulator, over real HTTPS on loopback."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imagegate.backends.registry import load_settings
from imagegate.backends.together import (
    TogetherBackend,
    build_request,
    error_from_response,
    parse_models,
    parse_response,
)
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import Deadline, ImageFormat, ImageRequest
from imagegate.testing import Knobs, LocalCA
from imagegate.testing import together as together_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    cli_generate,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.conftest import write_config

KEY = "tg-test-key-3b9d7c1e55aa"
GEN = "/v1/images/generations"
TOGETHER = BackendCase(
    name="together", kind="together", cls=TogetherBackend, create_app=together_emulator.create_app,
    env_var="TOGETHER_API_KEY", secret=KEY, table={"connect_timeout_s": 5.0, "read_timeout_s": 5.0},
    request={"prompt": "a lighthouse at dusk", "width": 256, "height": 192},
)
generate = TOGETHER.generate


@pytest.fixture
async def together_url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with TOGETHER.serve(knobs, local_ca) as url:
        yield url


# --- pure translation ------------------------------------------------------------------------


def test_build_request_uses_togethers_names_and_sends_optional_fields_only_when_set() -> None:
    body = build_request(ImageRequest(prompt="fox", width=512, height=384), model="m")
    assert body == {"model": "m", "prompt": "fox", "n": 1, "width": 512, "height": 384,
                    "response_format": "base64", "output_format": "png"}
    full = build_request(ImageRequest(prompt="fox", steps=4, seed=0, guidance_scale=3.5, negative_prompt="blur",
                                      output_format="jpeg", model="other"), model="m")
    assert (full["model"], full["steps"], full["seed"], full["guidance_scale"], full["negative_prompt"],
            full["output_format"]) == ("other", 4, 0, 3.5, "blur", "jpeg")


def test_parse_response_orders_by_index_and_keeps_urls() -> None:
    png = base64.b64encode(b"\x89PNG-two").decode()
    body = {"data": [{"index": 1, "b64_json": png, "type": "b64_json"},
                     {"index": 0, "url": "https://cdn.example/a.png", "type": "url"}]}
    assert parse_response(body, backend="t") == ["https://cdn.example/a.png", b"\x89PNG-two"]
    with pytest.raises(BadResponse, match="neither"):
        parse_response({"data": [{"index": 0, "url": "file:///etc/passwd"}]}, backend="t")


def test_parse_models_reads_the_bare_array_and_refuses_a_chat_model() -> None:
    body = [{"id": "a/img", "type": "image"}, {"id": "b/chat", "type": "chat"}]
    assert parse_models(body, "a/img", backend="t") == "2 models, 1 image models; a/img listed"
    with pytest.raises(Rejected, match="chat model"):
        parse_models(body, "b/chat", backend="t")
    with pytest.raises(BadResponse, match="array"):
        parse_models({"data": body}, "a/img", backend="t")


def test_error_keeps_togethers_message_and_code() -> None:
    body = b'{"error": {"message": "Invalid API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}'
    error = error_from_response(401, body, {}, backend="t")
    assert isinstance(error, AuthFailed) and str(error).endswith("Invalid API key provided. [invalid_api_key]")


# --- over HTTPS --------------------------------------------------------------------------------


async def test_generate_sends_togethers_fields_and_returns_the_size_asked(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend, width=512, height=384, seed=9, steps=4, negative_prompt="fog")
    assert (image.width, image.height, image.format, image.seed) == (512, 384, ImageFormat.PNG, 9)
    (sent,) = knobs.requests
    assert (sent.method, sent.path, sent.headers["Authorization"]) == ("POST", GEN, f"Bearer {KEY}")
    assert sent.body == {"model": "black-forest-labs/FLUX.1-schnell", "prompt": "a lighthouse at dusk", "n": 1,
                         "width": 512, "height": 384, "response_format": "base64", "output_format": "png",
                         "steps": 4, "seed": 9, "negative_prompt": "fog"}


async def test_jpeg_is_asked_for_by_name_and_n_images_come_back(
    together_url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        images = await generate(backend, output_format="jpeg", n=3)
    assert [(i.format, i.width) for i in images] == [(ImageFormat.JPEG, 256)] * 3


async def test_url_items_are_downloaded_under_the_download_policy(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("url_answer")
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        (image,) = await generate(backend)
    assert image.width == 256
    download = knobs.requests[-1]
    assert download.path.startswith("/files/") and "Authorization" not in download.headers


async def test_more_items_than_asked_are_dropped_and_noted(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("many_images", images=12)
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        images = await generate(backend, n=2)
    assert len(images) == 2 and images[0].info["extra_images_dropped"] == 10


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"n": 5}, "'n' must be between 1 and 4"), ({"model": "acme/unknown"}, "Unable to access model")],
)
async def test_what_together_refuses_is_rejected_with_its_message(
    together_url: str, tmp_path: Path, local_ca: LocalCA, fields: dict[str, object], match: str
) -> None:
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        request = ImageRequest(**{**TOGETHER.request, **fields})
        with pytest.raises(Rejected, match=match):
            await backend.generate(request, deadline=Deadline.after(5))


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, Rejected), (401, AuthFailed), (429, RateLimited), (500, ServerError), (503, Unavailable),
     (504, GenerationTimeout)],
)
async def test_error_statuses_map_to_their_kind(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, status: int, kind: type[BackendError]
) -> None:
    knobs.arm("status", status=status, body=together_emulator.error_body(status, "told to fail"))
    error = await fails(TOGETHER.backend(together_url, tmp_path, local_ca), generate, BackendError)
    assert type(error) is kind and "told to fail" in str(error)


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(25, 31))
async def test_rate_limited_reads_retry_after(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    retry_after.check(await fails(TOGETHER.backend(together_url, tmp_path, local_ca), generate, RateLimited))


async def test_bytes_that_are_no_image_are_bad_response(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image")
    await fails(TOGETHER.backend(together_url, tmp_path, local_ca), generate, BadResponse, match="not a PNG")


async def test_stalled_answer_is_generation_timeout_within_read_timeout(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("stall_body")
    opened = TOGETHER.backend(together_url, tmp_path, local_ca, read_timeout_s=0.3)
    await fails(opened, generate, GenerationTimeout, within_s=0.3 + 0.5)


async def test_tls_black_hole_is_handshake_timeout(blackhole_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = TOGETHER.backend(blackhole_url, tmp_path, local_ca, connect_timeout_s=0.3)
    await fails(opened, generate, HandshakeTimeout, within_s=0.3 + 0.2)


async def test_reset_is_connect_failed(together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    knobs.arm("reset")
    await fails(TOGETHER.backend(together_url, tmp_path, local_ca), generate, ConnectFailed)


# --- probe, config, secrets, the command ------------------------------------------------------


async def test_probe_lists_the_models_and_spends_nothing(
    together_url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with TOGETHER.backend(together_url, tmp_path, local_ca) as backend:
        health = await backend.probe(timeout=2)
    assert health.ok and "black-forest-labs/FLUX.1-schnell listed" in (health.detail or "")
    assert [r.path for r in knobs.requests] == ["/v1/models"]


async def test_probe_fails_for_a_configured_chat_model(together_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    opened = TOGETHER.backend(together_url, tmp_path, local_ca, model=together_emulator.CHAT_MODEL)
    async with opened as backend:
        health = await backend.probe(timeout=2)
    assert (health.ok, health.last_error_kind) == (False, "rejected")


async def test_refused_key_is_auth_failed_and_shown_nowhere(knobs: Knobs, tmp_path: Path, local_ca: LocalCA) -> None:
    async with TOGETHER.serve(knobs, local_ca, api_key="tg-the-emulators-own-key") as url:
        settings = TOGETHER.settings(url, tmp_path, local_ca)
        _, shown = await shown_after_refused_secret(settings, ImageRequest(prompt="fox", width=256, height=256))
    assert KEY not in shown


def test_together_api_key_alone_enables_the_backend() -> None:
    settings = load_settings(None, environ={"TOGETHER_API_KEY": KEY}, dotenv=False)
    assert [(b.kind, b.model) for b in settings.backends] == [("together", "black-forest-labs/FLUX.1-schnell")]


async def test_cli_generate_writes_the_512x384_image(together_url: str, tmp_path: Path, local_ca: LocalCA) -> None:
    config = write_config(tmp_path, f'[[backend]]\nname = "together"\nkind = "together"\nbase_url = "{together_url}"\n'
                                    f'ca_bundle = "{local_ca.ca_file}"\n')
    doc = await cli_generate(
        "a windmill at noon", "--width", "512", "--height", "384", "--seed", "9", "--steps", "12",
        config=config, env={"TOGETHER_API_KEY": KEY}, cwd=tmp_path, secret=KEY,
    )
    (image,) = doc["images"]
    assert (image["width"], image["height"], image["seed"]) == (512, 384, 9)
