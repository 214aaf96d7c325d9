"""The AUTOMATIC1111 backend against the A1111 emulator, over real loopback sockets.

Every fault is real: a listener that never answers, a closed port, an RST, a stalled body.
Timeouts are fractions of a second, set through the same config keys users set.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.a1111 import DEFAULT_STEPS, A1111Backend, build_request, parse_response
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    RateLimited,
)
from imagegate.models import ImageFormat, ImageRequest
from imagegate.testing import Knobs, make_image, serve_app
from imagegate.testing import a1111 as a1111_emulator

from tests.backends.support import (
    BackendCase,
    RetryAfter,
    fails,
    retry_after_forms,
    shown_after_refused_secret,
)
from tests.server.kit import closed_port_url

TXT2IMG = "/sdapi/v1/txt2img"
PROGRESS = "/sdapi/v1/progress"

A1111 = BackendCase(
    name="local", kind="a1111", cls=A1111Backend,
    request={"prompt": "a lighthouse at dusk", "width": 64, "height": 64},
)
generate = A1111.generate


def txt2img_bodies(knobs: Knobs) -> list[dict[str, Any]]:
    return [r.body for r in knobs.requests if r.path == TXT2IMG]


# --- the happy path --------------------------------------------------------------------------


async def test_generate_returns_png_of_requested_size_with_requested_seed(
    a1111_url: str, tmp_path: Path
) -> None:
    async with A1111.backend(a1111_url, tmp_path) as backend:
        (image,) = await generate(backend, width=512, height=768, seed=7)
    assert (image.width, image.height, image.seed, image.format) == (512, 768, 7, ImageFormat.PNG)
    assert image.to_pil().size == (512, 768)
    assert image.data == make_image(512, 768, "a lighthouse at dusk", 7)


async def test_random_seed_is_sent_as_minus_one_and_real_seed_read_from_info(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with A1111.backend(a1111_url, tmp_path) as backend:
        (image,) = await generate(backend)
    assert txt2img_bodies(knobs)[0]["seed"] == -1
    assert image.seed is not None and 0 <= image.seed < 2**32
    # the emulator's pixels depend on the seed it really used: the seed we report is that one
    assert image.data == make_image(64, 64, "a lighthouse at dusk", image.seed)


async def test_n_2_returns_two_images_with_their_own_seeds_from_all_seeds(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with A1111.backend(a1111_url, tmp_path) as backend:
        images = await generate(backend, n=2, seed=100)
    assert [img.seed for img in images] == [100, 101]  # the emulator's info.all_seeds
    assert images[0].data != images[1].data
    assert txt2img_bodies(knobs)[0]["batch_size"] == 2


async def test_wire_fields_match_the_webui_api(a1111_url: str, knobs: Knobs, tmp_path: Path) -> None:
    async with A1111.backend(a1111_url, tmp_path, model="sd_xl_base_1.0") as backend:
        await generate(
            backend,
            prompt="a red fox",
            negative_prompt="blurry",
            width=576,
            height=320,
            steps=12,
            guidance_scale=6.5,
            seed=42,
            sampler="DPM++ 2M",
        )
    (body,) = txt2img_bodies(knobs)
    assert body["prompt"] == "a red fox"
    assert body["negative_prompt"] == "blurry"
    assert (body["width"], body["height"]) == (576, 320)
    assert body["steps"] == 12
    assert body["cfg_scale"] == 6.5
    assert body["seed"] == 42
    assert body["sampler_name"] == "DPM++ 2M"
    assert body["batch_size"] == 1
    assert body["override_settings"] == {"sd_model_checkpoint": "sd_xl_base_1.0"}
    assert knobs.requests[0].headers["Content-Type"].startswith("application/json")


async def test_request_model_overrides_config_model_and_unset_fields_are_not_sent(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with A1111.backend(a1111_url, tmp_path, model="from-config") as backend:
        await generate(backend, model="from-request")
        await generate(backend)  # no model in the request
    first, second = txt2img_bodies(knobs)
    assert first["override_settings"] == {"sd_model_checkpoint": "from-request"}
    assert second["override_settings"] == {"sd_model_checkpoint": "from-config"}
    for absent in ("cfg_scale", "sampler_name"):  # the webui's own defaults apply
        assert absent not in second


async def test_unset_steps_are_sent_as_the_ui_default_20_not_the_api_default_50(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with A1111.backend(a1111_url, tmp_path) as backend:
        await generate(backend)
        await generate(backend, steps=33)
    unset, given = txt2img_bodies(knobs)
    assert (unset["steps"], given["steps"]) == (DEFAULT_STEPS, 33) and DEFAULT_STEPS == 20
    assert a1111_emulator.create_app  # the emulator's own default is the API's 50:
    bare = await _raw_txt2img(a1111_url, {"prompt": "x", "width": 64, "height": 64})
    assert json.loads(bare["info"])["steps"] == 50


def test_build_request_without_model_sends_no_override_settings() -> None:
    payload = build_request(ImageRequest(prompt="x"), model=None)
    assert "override_settings" not in payload
    assert payload["seed"] == -1 and payload["batch_size"] == 1


# --- HTTP errors, each mapped to its kind ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "rejected"),
        (422, "rejected"),
        (401, "auth_failed"),
        (403, "auth_failed"),
        (402, "quota_exhausted"),
        (429, "rate_limited"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "unavailable"),
    ],
)
async def test_http_status_maps_to_error_kind(
    status: int, kind: str, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=status)
    error = await fails(A1111.backend(a1111_url, tmp_path), generate, BackendError)
    assert error.kind == kind
    assert error.status == status
    assert error.backend == "local"


async def test_an_unknown_sampler_sent_anyway_silently_gets_the_webui_default(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    """What the router's capability check exists for: the webui (1.9+) answers 200 with its
    first sampler, and says so only in ``info`` (tests/routing/test_adapt_live.py)."""
    async with A1111.backend(a1111_url, tmp_path) as backend:
        (image,) = await generate(backend, sampler="No Such Sampler")
    assert image.width == 64
    (body,) = txt2img_bodies(knobs)
    assert body["sampler_name"] == "No Such Sampler"


@retry_after_forms(seconds=7, date_ahead_s=30, date_range=(27.0, 31.0))
async def test_rate_limited_reads_retry_after(
    a1111_url: str, knobs: Knobs, tmp_path: Path, retry_after: RetryAfter
) -> None:
    knobs.arm("status", status=429, headers=retry_after.headers())
    retry_after.check(await fails(A1111.backend(a1111_url, tmp_path), generate, RateLimited))


# --- network faults --------------------------------------------------------------------------


async def test_listener_that_never_answers_is_a_handshake_timeout_within_connect_budget(
    blackhole_url: str, tmp_path: Path
) -> None:
    async with A1111.backend(blackhole_url, tmp_path, connect_timeout_s=0.3) as backend:
        start = time.monotonic()
        with pytest.raises(HandshakeTimeout) as caught:
            await generate(backend)
        elapsed = time.monotonic() - start
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.kind == "handshake_timeout"
    assert 0.25 <= elapsed < 0.3 + 1.0  # a starved loop may fire late; failing, it waits 5-10 s


async def test_closed_port_is_connect_failed_refused(tmp_path: Path) -> None:
    error = await fails(A1111.backend(closed_port_url(), tmp_path), generate, ConnectFailed)
    assert error.refused is True
    assert "refused" in str(error)


async def test_body_that_is_not_an_image_is_bad_response(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("not_image")
    await fails(A1111.backend(a1111_url, tmp_path), generate, BadResponse, match="not a PNG")


async def test_reset_before_the_response_is_connect_failed(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("reset")
    error = await fails(A1111.backend(a1111_url, tmp_path), generate, ConnectFailed)
    assert error.refused is False


@pytest.mark.parametrize("fault", ["stall", "stall_body"])
async def test_stalled_answer_is_a_generation_timeout_within_read_budget(
    fault: str, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm(fault)
    async with A1111.backend(a1111_url, tmp_path, read_timeout_s=0.3) as backend:
        start = time.monotonic()
        with pytest.raises(GenerationTimeout):
            await generate(backend)
        elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 0.3 + 1.0  # a starved loop may fire late; failing, it waits 5-10 s


async def test_deadline_shorter_than_the_generation_is_a_generation_timeout_at_the_deadline(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.latency_s = 5.0
    async with A1111.backend(a1111_url, tmp_path) as backend:
        start = time.monotonic()
        with pytest.raises(GenerationTimeout):
            await generate(backend, deadline_s=0.3)
        elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 0.3 + 1.0  # a starved loop may fire late; failing, it waits 5-10 s


# --- basic auth ------------------------------------------------------------------------------

USER, PASSWORD = "artist", "pw-Zq8-never-logged"
AUTH_KEYS = {"username_env": "A1111_USER", "password_env": "A1111_PASSWORD"}


@pytest.fixture
async def auth_url(knobs: Knobs) -> AsyncIterator[str]:
    app = a1111_emulator.create_app(knobs=knobs, username=USER, password=PASSWORD)
    async with serve_app(app) as url:
        yield url


async def test_basic_auth_with_right_credentials_generates(
    auth_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    environ = {"A1111_USER": USER, "A1111_PASSWORD": PASSWORD}
    async with A1111.backend(auth_url, tmp_path, environ=environ, **AUTH_KEYS) as backend:
        (image,) = await generate(backend, seed=1)
        health = await backend.probe(timeout=2.0)
    assert image.seed == 1
    assert health.ok is True
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert {r.headers.get("Authorization") for r in knobs.requests} == {expected}


async def test_wrong_password_is_auth_failed_and_never_logged(
    auth_url: str, tmp_path: Path
) -> None:
    wrong = "wrong-pw-Kx3-also-secret"
    environ = {"A1111_USER": USER, "A1111_PASSWORD": wrong}
    settings = A1111.settings(auth_url, tmp_path, environ=environ, **AUTH_KEYS)
    request = ImageRequest(prompt="x", width=64, height=64)
    error, text = await shown_after_refused_secret(settings, request)  # and it was logged
    attempts = error.attempts
    assert attempts and {(a.outcome, a.status) for a in attempts} == {("auth_failed", 401)}
    assert wrong not in text and PASSWORD not in text


async def test_missing_credentials_are_auth_failed(auth_url: str, tmp_path: Path) -> None:
    async with A1111.backend(auth_url, tmp_path) as backend:
        with pytest.raises(AuthFailed) as caught:
            await generate(backend)
    assert caught.value.status == 401


# --- probe -----------------------------------------------------------------------------------


async def test_probe_reports_ok_with_timings(a1111_url: str, knobs: Knobs, tmp_path: Path) -> None:
    async with A1111.backend(a1111_url, tmp_path) as backend:
        health = await backend.probe(timeout=2.0)
    assert (health.name, health.kind, health.ok) == ("local", "a1111", True)
    assert health.detail and "progress" in health.detail
    assert health.timings["total_s"] >= 0
    probe, *lists = knobs.requests[:5]
    assert probe.path == PROGRESS and probe.query == {"skip_current_image": "true"}
    assert {r.path for r in lists} == {
        "/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/options"
    }
    assert not txt2img_bodies(knobs)  # a probe costs no generation


async def test_probe_discovers_checkpoints_samplers_schedulers_and_format(
    tmp_path: Path,
) -> None:
    async with (
        serve_app(a1111_emulator.create_app(samples_format="webp")) as url,
        A1111.backend(url, tmp_path) as backend,
    ):
        assert backend.capabilities.source.startswith("built-in")
        await backend.probe(timeout=2.0)
        caps = backend.capabilities
    assert caps.source.startswith("discovered: checkpoints, samplers")
    assert caps.models == tuple(m["title"] for m in a1111_emulator.MODELS)
    assert {"dreamshaper_8", "879db523c3", "sd_xl_base_1.0"} <= set(caps.model_aliases)
    assert caps.samplers == tuple(a1111_emulator.SAMPLERS)
    assert {"Karras", "karras", "SGMUniform"} <= set(caps.scheduler_suffixes)
    assert caps.formats == ("webp",)


async def test_a_webui_before_1_9_has_no_schedulers_and_discovery_still_works(
    knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=404, path="/sdapi/v1/schedulers", count=10)
    async with (
        serve_app(a1111_emulator.create_app(knobs=knobs)) as url,
        A1111.backend(url, tmp_path) as backend,
    ):
        await backend.probe(timeout=2.0)
        caps = backend.capabilities
    assert caps.samplers and caps.scheduler_suffixes == ()


async def test_discovery_failing_keeps_the_probe_ok_and_the_old_capabilities(
    knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=500, path="/sdapi/v1/samplers", count=10)
    async with (
        serve_app(a1111_emulator.create_app(knobs=knobs)) as url,
        A1111.backend(url, tmp_path) as backend,
    ):
        health = await backend.probe(timeout=2.0)
        assert health.ok and backend.capabilities.source.startswith("built-in")


async def test_probe_of_a_closed_port_reports_connect_failed(tmp_path: Path) -> None:
    async with A1111.backend(closed_port_url(), tmp_path) as backend:
        health = await backend.probe(timeout=2.0)
    assert health.ok is False
    assert health.last_error_kind == "connect_failed"


async def test_probe_of_a_failing_server_reports_server_error(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=500, path=PROGRESS)
    async with A1111.backend(a1111_url, tmp_path) as backend:
        health = await backend.probe(timeout=2.0)
    assert health.ok is False
    assert health.last_error_kind == "server_error"


# --- pure translation ------------------------------------------------------------------------


def test_parse_response_pairs_images_with_all_seeds() -> None:
    png = base64.b64encode(make_image(64, 64, "x", 3)).decode()
    info = json.dumps({"seed": 3, "all_seeds": [3, 4]})
    pairs, note = parse_response({"images": [png, png], "info": info}, backend="b")
    assert note == {}
    assert [seed for _, seed in pairs] == [3, 4]


def test_parse_response_skips_a_prepended_grid() -> None:
    grid, one = (base64.b64encode(make_image(64, 64, "x", s)).decode() for s in (0, 1))
    info = json.dumps({"all_seeds": [1], "index_of_first_image": 1})
    ((data, seed),), _ = parse_response({"images": [grid, one], "info": info}, backend="b")
    assert seed == 1 and data == make_image(64, 64, "x", 1)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"images": []},
        {"images": "not a list"},
        {"images": [123]},
        {"images": ["***not base64***"]},
        ["images"],
    ],
)
def test_parse_response_refuses_malformed_bodies_as_bad_response(body: Any) -> None:
    with pytest.raises(BadResponse):
        parse_response(body, backend="b")


@pytest.mark.parametrize("body", [["not", "an", "object"], "<html>proxy error page</html>"])
async def test_probe_of_a_garbled_answer_reports_bad_response(
    body: Any, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    knobs.arm("status", status=200, body=body, path=PROGRESS)
    async with A1111.backend(a1111_url, tmp_path) as backend:
        health = await backend.probe(timeout=2.0)
    assert health.ok is False
    assert health.last_error_kind == "bad_response"


async def test_answer_larger_than_max_image_bytes_is_bad_response(
    a1111_url: str, tmp_path: Path
) -> None:
    opened = A1111.backend(a1111_url, tmp_path, max_image_bytes=1024)
    too_big = partial(generate, width=512, height=512)
    await fails(opened, too_big, BadResponse, match="max_image_bytes")


async def _raw_txt2img(url: str, body: dict[str, Any]) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(url + TXT2IMG, json=body) as resp:
        return await resp.json()
