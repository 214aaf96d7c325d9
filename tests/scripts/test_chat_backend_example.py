"""scripts/chat_backend_example.py, exercised against the A1111 emulator over loopback."""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType

import aiohttp
from imagegate.testing import serve_app
from PIL import Image

from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parents[2]


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chat_backend_example", ROOT / "scripts/chat_backend_example.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


def test_wants_image_extracts_the_prompt() -> None:
    assert example.wants_image("draw a lighthouse at dusk") == "a lighthouse at dusk"
    assert example.wants_image("/image a cat") == "a cat"
    assert example.wants_image("hello there") is None
    assert example.wants_image("draw") is None


async def test_chat_message_gets_an_image_url_that_serves_a_png(a1111_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        [{"name": "local", "kind": "a1111", "base_url": a1111_url}],
        service={"output_dir": str(tmp_path / "out")},
        tmp_path=tmp_path,
    )
    async with serve_app(example.create_app(settings)) as url, aiohttp.ClientSession() as http:
        async with http.post(f"{url}/chat", json={"message": "draw a lighthouse at dusk"}) as resp:
            answer = await resp.json()
        assert answer["backend"] == "local"
        async with http.get(url + answer["image_url"]) as resp:
            assert resp.status == 200
            data = await resp.read()
        assert Image.open(io.BytesIO(data)).size == (512, 512)
        async with http.get(f"{url}/images/../../etc/passwd") as resp:
            assert resp.status == 404


async def test_end_user_gets_a_kind_sentence_when_every_backend_fails(tmp_path: Path) -> None:
    settings = make_settings(
        [{"name": "down", "kind": "a1111", "base_url": "http://127.0.0.1:9", "connect_timeout_s": 0.3}],
        service={"output_dir": str(tmp_path / "out")},
        tmp_path=tmp_path,
    )
    async with (
        serve_app(example.create_app(settings)) as url,
        aiohttp.ClientSession() as http,
        http.post(f"{url}/chat", json={"message": "draw a cat"}) as resp,
    ):
        answer = await resp.json()
    assert answer["image_url"] is None
    assert answer["reply"] == example.SORRY


async def test_a_bad_body_is_a_400_with_a_kind_message_not_a_traceback(a1111_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        [{"name": "local", "kind": "a1111", "base_url": a1111_url}],
        service={"output_dir": str(tmp_path / "out")},
        tmp_path=tmp_path,
    )
    bodies = [b"draw a cat", b"\xff\xfe", b"[1, 2]", b'{"message": 42}', b""]
    async with serve_app(example.create_app(settings)) as url, aiohttp.ClientSession() as http:
        for body in bodies:
            async with http.post(f"{url}/chat", data=body) as resp:
                answer = await resp.json()
                assert resp.status == 400, body
            assert answer == {"reply": example.BAD_BODY, "image_url": None}, body
