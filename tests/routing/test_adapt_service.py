"""Capability-aware routing through the real service, against the A1111 and OpenAI emulators:
what the webui would silently replace is checked before sending, OpenAI's per-model rules fit
the request, and a backend that cannot serve it is skipped before any I/O."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from imagegate.errors import InvalidRequest
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, serve_app
from imagegate.testing import openai_images as openai_emulator

from tests.conftest import make_settings

KEY = "sk-adapt-0123456789"
TXT2IMG = "/sdapi/v1/txt2img"
GENERATIONS = "/v1/images/generations"


@pytest.fixture
async def openai_url(knobs: Knobs) -> AsyncIterator[str]:
    async with serve_app(openai_emulator.create_app(knobs=knobs, api_key=KEY)) as url:
        yield url


def a1111(url: str, **keys: Any) -> dict[str, Any]:
    return {"name": "sd", "kind": "a1111", "base_url": url, **keys}


def dalle3(url: str, **keys: Any) -> dict[str, Any]:
    return {"name": "dalle", "kind": "openai", "base_url": url, "model": "dall-e-3", **keys}


def service(tmp_path: Path, *tables: dict[str, Any], **keys: Any) -> ImageService:
    settings = make_settings(list(tables), service={"probe_interval_s": 3600, **keys},
                             environ={"OPENAI_API_KEY": KEY}, tmp_path=tmp_path)
    return ImageService(settings)


def bodies(knobs: Knobs, path: str) -> list[Any]:
    return [r.body for r in knobs.requests if r.path == path]


# --- AUTOMATIC1111: what the webui would replace without a word ---------------------------------


async def test_an_unknown_sampler_is_dropped_with_an_adjustment_once_the_lists_are_known(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, a1111(a1111_url)) as svc:
        await svc.probe_all()
        result = await svc.generate(ImageRequest(prompt="x", width=64, height=64, sampler="No Such"))
        respelt = await svc.generate(ImageRequest(prompt="x", width=64, height=64, sampler="euler a"))
    first, second = bodies(knobs, TXT2IMG)
    assert "sampler_name" not in first and second["sampler_name"] == "Euler a"
    (row,) = result.adjustments
    assert (row.field, row.asked, row.used) == ("sampler", "No Such", None)
    assert "it has: DPM++ 2M" in row.why
    assert [(a.asked, a.used) for a in respelt.adjustments] == [("euler a", "Euler a")]


async def test_strict_refuses_an_unknown_sampler_and_nothing_reaches_the_webui(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, a1111(a1111_url), adapt="strict") as svc:
        await svc.probe_all()
        with pytest.raises(InvalidRequest) as caught:
            await svc.generate(ImageRequest(prompt="x", sampler="No Such"))
        assert svc.breaker("sd").state == "closed"
    assert caught.value.field == "sampler" and not bodies(knobs, TXT2IMG)


async def test_a_checkpoint_the_webui_does_not_have_is_refused_naming_the_ones_it_has(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, a1111(a1111_url)) as svc:
        await svc.probe_all()
        with pytest.raises(InvalidRequest) as caught:
            await svc.generate(ImageRequest(prompt="x", model="sd15-nope"))
        ok = await svc.generate(ImageRequest(prompt="x", width=64, height=64, model="dreamshaper_8"))
    assert caught.value.field == "model"
    assert "sd: model 'sd15-nope' is not one of this backend's models (sd_xl_base_1.0" in str(caught.value)
    (body,) = bodies(knobs, TXT2IMG)
    assert body["override_settings"] == {"sd_model_checkpoint": "dreamshaper_8"} and ok.adjustments == []


async def test_a_format_the_webui_does_not_write_is_converted_and_said(
    a1111_url: str, tmp_path: Path
) -> None:
    async with service(tmp_path, a1111(a1111_url)) as svc:
        result = await svc.generate(ImageRequest(prompt="x", width=64, height=64, output_format="jpeg"))
    (image,) = result.images
    assert image.format is ImageFormat.JPEG and image.data.startswith(b"\xff\xd8")
    (row,) = result.adjustments
    assert (row.field, row.used) == ("output_format", "jpeg") and "(png)" in row.why


# --- OpenAI's per-model rules ------------------------------------------------------------------


async def test_dall_e_3_n_3_becomes_three_calls_and_a_size_is_snapped(
    openai_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, dalle3(openai_url)) as svc:
        result = await svc.generate(ImageRequest(prompt="x", n=3, width=1000, height=600, seed=4))
    sent = bodies(knobs, GENERATIONS)
    assert [(b["n"], b["size"], b["seed"]) for b in sent] == [
        (1, "1792x1024", 4), (1, "1792x1024", 5), (1, "1792x1024", 6)
    ]
    assert len(result.images) == 3 and {(i.width, i.height) for i in result.images} == {(1792, 1024)}
    assert {(a.field, a.asked, a.used) for a in result.adjustments} == {
        ("size", "1000x600", "1792x1024"), ("n", 3, 3)
    }


async def test_strict_skips_dall_e_3_for_a_size_it_cannot_make_and_another_backend_serves(
    openai_url: str, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, dalle3(openai_url), a1111(a1111_url, priority=1), adapt="strict") as svc:
        result = await svc.generate(ImageRequest(prompt="x", width=512, height=512))
        assert svc.breaker("dalle").state == "closed"
    assert result.backend == "sd"
    assert [(a.backend, a.outcome) for a in result.attempts] == [("dalle", "skipped"), ("sd", "ok")]
    assert "allowed: 1024x1024, 1792x1024, 1024x1792" in (result.attempts[0].error or "")
    assert not bodies(knobs, GENERATIONS)  # no call at all


async def test_a_backend_named_on_the_request_that_cannot_serve_it_is_the_callers_error(
    openai_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, dalle3(openai_url), adapt="strict") as svc:
        with pytest.raises(InvalidRequest) as caught:
            await svc.generate(ImageRequest(prompt="x", width=512, height=512, steps=4), backend="dalle")
    assert caught.value.field == "size" and not bodies(knobs, GENERATIONS)


async def test_capabilities_follow_the_model_the_request_names(
    openai_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    async with service(tmp_path, dalle3(openai_url)) as svc:
        await svc.generate(ImageRequest(prompt="x", n=2, width=512, height=512, model="dall-e-2"))
        (health,) = svc.health()
    (body,) = bodies(knobs, GENERATIONS)  # dall-e-2 makes 2 per call, 512x512 is its size
    assert (body["model"], body["n"], body["size"]) == ("dall-e-2", 2, "512x512")
    assert health.capabilities is not None and health.capabilities.max_n == 1  # the config's model


async def test_stability_takes_a_ratio_drops_steps_and_the_pixels_it_picked_are_reported(
    tmp_path: Path,
) -> None:
    from imagegate.testing import stability as stability_emulator

    async with serve_app(stability_emulator.create_app(api_key=KEY)) as url:
        table = {"name": "stab", "kind": "stability", "base_url": url}
        settings = make_settings([table], service={"probe_interval_s": 3600},
                                 environ={"STABILITY_API_KEY": KEY}, tmp_path=tmp_path)
        async with ImageService(settings) as svc:
            result = await svc.generate(ImageRequest(prompt="x", width=1000, height=600, steps=30))
    rows = {(a.field, a.asked, a.used) for a in result.adjustments}
    assert rows == {("size", "1000x600", "16:9"), ("steps", 30, None), ("size", "1000x600", "1344x768")}
    assert (result.images[0].width, result.images[0].height) == (1344, 768)


async def test_in_nearest_mode_a_backend_that_cannot_serve_even_adapted_is_skipped_first(
    openai_url: str, a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    dalle2 = {**dalle3(openai_url), "model": "dall-e-2"}
    async with service(tmp_path, dalle2, a1111(a1111_url, priority=1)) as svc:
        result = await svc.generate(ImageRequest(prompt="p" * 1200, width=64, height=64))
        assert svc.breaker("dalle").state == "closed"
    assert [(a.backend, a.outcome) for a in result.attempts] == [("dalle", "skipped"), ("sd", "ok")]
    assert result.attempts[0].error == (
        "cannot serve it: prompt 1200 characters; this backend takes at most 1000"
    )
    assert not bodies(knobs, GENERATIONS)
