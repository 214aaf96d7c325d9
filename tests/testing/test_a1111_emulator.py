"""The A1111 emulator speaks the webui's wire format, over a real loopback socket."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from imagegate.testing import Knobs, make_image, serve_app
from imagegate.testing import a1111 as a1111_emulator
from PIL import Image

TXT2IMG = "/sdapi/v1/txt2img"


@pytest.fixture
async def http(a1111_url: str) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session, a1111_url


async def post(http: tuple[aiohttp.ClientSession, str], body: Any, **kw: Any) -> tuple[int, Any]:
    session, url = http
    async with session.post(url + TXT2IMG, json=body, **kw) as resp:
        return resp.status, await resp.json()


async def test_txt2img_answers_real_pngs_of_the_requested_size_and_info_as_a_json_string(
    http: tuple[aiohttp.ClientSession, str],
) -> None:
    body = {"prompt": "a fox", "width": 128, "height": 64, "seed": 5, "batch_size": 2}
    status, answer = await post(http, body)
    assert status == 200
    assert set(answer) == {"images", "parameters", "info"}
    assert answer["parameters"] == body
    info = json.loads(answer["info"])  # a string, as the webui sends it
    assert info["all_seeds"] == [5, 6] and info["seed"] == 5
    assert (info["width"], info["height"]) == (128, 64)
    for b64, seed in zip(answer["images"], info["all_seeds"], strict=True):
        data = base64.b64decode(b64)
        assert data.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(data)).size == (128, 64)
        assert data == make_image(128, 64, "a fox", seed)


async def test_pixels_depend_on_prompt_and_seed(http: tuple[aiohttp.ClientSession, str]) -> None:
    async def image(prompt: str, seed: int) -> str:
        _, answer = await post(http, {"prompt": prompt, "width": 64, "height": 64, "seed": seed})
        return str(answer["images"][0])

    a = await image("a fox", 1)
    assert a == await image("a fox", 1)
    assert a != await image("a fox", 2)
    assert a != await image("a wolf", 1)


async def test_seed_minus_one_picks_a_random_seed_and_reports_it(
    http: tuple[aiohttp.ClientSession, str],
) -> None:
    _, answer = await post(http, {"prompt": "x", "width": 64, "height": 64, "seed": -1})
    (seed,) = json.loads(answer["info"])["all_seeds"]
    assert 0 <= seed < 2**32
    assert base64.b64decode(answer["images"][0]) == make_image(64, 64, "x", seed)


async def test_webui_defaults_apply_to_missing_fields(http: tuple[aiohttp.ClientSession, str]) -> None:
    _, answer = await post(http, {"prompt": "x"})
    info = json.loads(answer["info"])
    assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (512, 512, 50, "Euler")


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"prompt": "x", "width": "wide"}, ["body", "width"]),
        ({"prompt": 5}, ["body", "prompt"]),
        ({"prompt": "x", "cfg_scale": "high"}, ["body", "cfg_scale"]),
        (["not", "an", "object"], ["body"]),
    ],
)
async def test_malformed_body_gets_fastapi_style_422(
    http: tuple[aiohttp.ClientSession, str], body: Any, loc: list[str]
) -> None:
    status, answer = await post(http, body)
    assert status == 422
    assert answer["detail"][0]["loc"] == loc
    assert {"loc", "msg", "type"} <= set(answer["detail"][0])


async def test_body_that_is_not_json_gets_422(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, url = http
    async with session.post(url + TXT2IMG, data=b"{not json") as resp:
        assert resp.status == 422


@pytest.mark.parametrize(
    ("asked", "sampler", "scheduler"),
    [
        ("Nope", "DPM++ 2M", "Automatic"),  # unknown: silently samplers[0] (1.9+), no error
        ("euler a", "DPM++ 2M", "Automatic"),  # names are looked up exactly
        ("Euler a", "Euler a", "Automatic"),
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),  # a scheduler suffix is split off
        ("DPM++ SDE karras", "DPM++ SDE", "Karras"),  # by the scheduler's name too
    ],
)
async def test_sampler_resolves_like_the_webui_with_a_silent_fallback(
    http: tuple[aiohttp.ClientSession, str], asked: str, sampler: str, scheduler: str
) -> None:
    status, answer = await post(http, {"prompt": "x", "width": 64, "height": 64, "sampler_name": asked})
    info = json.loads(answer["info"])
    assert status == 200
    assert (info["sampler_name"], info["extra_generation_params"]["Schedule type"]) == (sampler, scheduler)


@pytest.mark.parametrize(
    ("checkpoint", "used"),
    [
        ("dreamshaper_8", "dreamshaper_8"),  # model_name
        ("dreamshaper_8.safetensors [879db523c3]", "dreamshaper_8"),  # title
        ("879db523c3", "dreamshaper_8"),  # short sha256
        ("no-such-model", "sd_xl_base_1.0"),  # unknown: dropped, the loaded one is used
    ],
)
async def test_checkpoint_override_is_used_when_known_and_silently_ignored_when_not(
    http: tuple[aiohttp.ClientSession, str], checkpoint: str, used: str
) -> None:
    body = {"prompt": "x", "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": checkpoint}}
    status, answer = await post(http, body)
    assert status == 200 and json.loads(answer["info"])["sd_model_name"] == used


async def test_samples_format_sets_the_image_encoding_and_options_report_it() -> None:
    async with serve_app(a1111_emulator.create_app(samples_format="webp")) as url, aiohttp.ClientSession() as s:
        async with s.post(url + TXT2IMG, json={"prompt": "x", "width": 64, "height": 64}) as resp:
            data = base64.b64decode((await resp.json())["images"][0])
        async with s.get(url + "/sdapi/v1/options") as resp:
            options = await resp.json()
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert options["samples_format"] == "webp"


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/sdapi/v1/progress?skip_current_image=true", lambda b: b["progress"] == 0.0 and "state" in b),
        ("/sdapi/v1/options", lambda b: "sd_model_checkpoint" in b),
        ("/sdapi/v1/sd-models", lambda b: b[0]["model_name"] == "sd_xl_base_1.0"),
        ("/sdapi/v1/samplers", lambda b: "Euler a" in [s["name"] for s in b]),
        ("/sdapi/v1/schedulers", lambda b: {"name": "karras", "label": "Karras"}.items() <= b[2].items()),
        ("/internal/ping", lambda b: b == {}),
    ],
)
async def test_read_only_endpoints_answer(
    http: tuple[aiohttp.ClientSession, str], path: str, check: Any
) -> None:
    session, url = http
    async with session.get(url + path) as resp:
        assert resp.status == 200
        assert check(await resp.json())


async def test_knobs_record_every_request_with_its_body(
    http: tuple[aiohttp.ClientSession, str], knobs: Knobs
) -> None:
    await post(http, {"prompt": "recorded", "width": 64, "height": 64})
    (recorded,) = knobs.requests
    assert (recorded.method, recorded.path) == ("POST", TXT2IMG)
    assert recorded.body == {"prompt": "recorded", "width": 64, "height": 64}


async def test_armed_status_answers_webui_error_shape_once(
    http: tuple[aiohttp.ClientSession, str], knobs: Knobs
) -> None:
    knobs.arm("status", status=500)
    status, answer = await post(http, {"prompt": "x", "width": 64, "height": 64})
    assert status == 500 and answer["error"] == "HTTPException"
    status, _ = await post(http, {"prompt": "x", "width": 64, "height": 64})
    assert status == 200


async def test_not_image_knob_answers_base64_that_is_no_image(
    http: tuple[aiohttp.ClientSession, str], knobs: Knobs
) -> None:
    knobs.arm("not_image")
    _, answer = await post(http, {"prompt": "x", "width": 64, "height": 64})
    assert not base64.b64decode(answer["images"][0]).startswith(b"\x89PNG")


async def test_basic_auth_guards_sdapi_but_not_internal_routes() -> None:
    app = a1111_emulator.create_app(username="artist", password="pw")
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/sdapi/v1/progress") as resp:
            assert resp.status == 401
            assert (await resp.json())["detail"] == "Incorrect username or password"
        good = {"Authorization": "Basic " + base64.b64encode(b"artist:pw").decode()}
        async with session.get(url + "/sdapi/v1/progress", headers=good) as resp:
            assert resp.status == 200
        async with session.get(url + "/internal/ping") as resp:  # not behind --api-auth
            assert resp.status == 200


async def test_many_images_answers_the_number_of_images_it_was_armed_with(
    http: tuple[aiohttp.ClientSession, str], knobs: Knobs
) -> None:
    """``arm("many_images", images=N)``: N reaches the emulator (``count`` is arm()'s own: how
    many requests misbehave)."""
    knobs.arm("many_images", images=7)
    status, answer = await post(http, {"prompt": "a fox", "width": 64, "height": 64})
    assert status == 200 and len(answer["images"]) == 7
