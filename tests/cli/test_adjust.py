"""``[service] adapt`` seen from the outside: ``imagegate generate`` (its ``--json`` and its exit
code) and the HTTP API (the ``adjustments`` field, the ``x-imagegate-adjustments`` header and
400 naming the field), against real emulators on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from imagegate.testing import Knobs, serve_app
from imagegate.testing import openai_images as openai_emulator
from PIL import Image

from tests.cli.test_main import assert_no_traceback, imagegate
from tests.conftest import make_settings, write_config
from tests.server.kit import gateway

KEY = "sk-adjust-0123456789"


@pytest.fixture
async def dalle_url(knobs: Knobs) -> AsyncIterator[str]:
    async with serve_app(openai_emulator.create_app(knobs=knobs, api_key=KEY)) as url:
        yield url


def dalle_config(tmp_path: Path, url: str, adapt: str) -> Path:
    return write_config(tmp_path, f"""
[service]
adapt = "{adapt}"

[[backend]]
name = "dalle"
kind = "openai"
base_url = "{url}"
model = "dall-e-3"
""")


async def test_json_lists_the_adjustments_and_the_file_is_in_the_format_asked(
    a1111_url: str, tmp_path: Path
) -> None:
    run = await imagegate("generate", "a cat", "--width", "64", "--height", "64", "--format", "jpeg",
                          "--seed", "3", "--json", cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert run.code == 0, run.stderr
    doc = json.loads(run.stdout)
    (row,) = doc["adjustments"]
    assert (row["field"], row["asked"], row["used"]) == ("output_format", "jpeg", "jpeg")
    assert "converted with Pillow" in row["why"] and "(png)" in row["why"]
    (image,) = doc["images"]
    assert image["format"] == "jpeg" and image["path"].endswith(".jpg")
    with Image.open(tmp_path / image["path"]) as img:
        assert img.format == "JPEG"
    assert b"Seed: 3" in (tmp_path / image["path"]).read_bytes()  # the parameters, as a comment


async def test_without_json_each_adjustment_is_one_line(dalle_url: str, tmp_path: Path) -> None:
    config = dalle_config(tmp_path, dalle_url, "nearest")
    run = await imagegate("generate", "a cat", "--width", "512", "--height", "512", "--config", str(config),
                          cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert run.code == 0, run.stderr
    assert "adjusted: size 512x512->1024x1024 (allowed: 1024x1024, 1792x1024, 1024x1792)" in run.stdout


async def test_strict_exits_2_naming_the_field_and_what_the_backends_accept(
    dalle_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    config = dalle_config(tmp_path, dalle_url, "strict")
    run = await imagegate("generate", "a cat", "--width", "512", "--height", "512", "--config", str(config),
                          cwd=tmp_path, env={"OPENAI_API_KEY": KEY})
    assert run.code == 2
    assert_no_traceback(run)
    assert "invalid request: size: no configured backend can serve this request" in run.stderr
    assert "dalle: size 512x512 cannot be served as asked: allowed: 1024x1024, 1792x1024, 1024x1792" in run.stderr
    assert not [r for r in knobs.requests if r.path == "/v1/images/generations"]


async def test_the_http_api_answers_adjustments_in_a_header_and_the_body(
    dalle_url: str, tmp_path: Path
) -> None:
    table = {"name": "dalle", "kind": "openai", "base_url": dalle_url, "model": "dall-e-3"}
    for adapt in ("nearest", "strict"):
        settings = make_settings([table], service={"adapt": adapt, "output_dir": tmp_path / "out"},
                                 environ={"OPENAI_API_KEY": KEY}, tmp_path=tmp_path)
        async with (
            gateway(settings) as (url, _),
            aiohttp.ClientSession() as http,
            http.post(url + "/v1/images/generations", json={"prompt": "a cat", "size": "512x512"}) as resp,
        ):
            status, headers, body = resp.status, resp.headers, await resp.json()
            async with http.get(url + "/v1/backends") as listing:
                (row,) = (await listing.json())["data"]
        assert row["capabilities"]["sizes"] == [[1024, 1024], [1792, 1024], [1024, 1792]]
        assert row["capabilities"]["source"] == "built-in: dall-e-3 (openai-python image_generate_params)"
        if adapt == "nearest":
            assert status == 200 and body["size"] == "1024x1024"
            assert headers["x-imagegate-adjustments"] == "size 512x512->1024x1024"
            assert body["adjustments"] == [{"field": "size", "asked": "512x512", "used": "1024x1024",
                                            "why": "allowed: 1024x1024, 1792x1024, 1024x1792"}]
        else:
            assert status == 400 and "x-imagegate-adjustments" not in headers
            assert body["error"]["param"] == "size" and "512x512 cannot be served" in body["error"]["message"]
