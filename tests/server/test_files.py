"""``url`` answers: signed, expiring links a browser opens with no header; they survive a
restart and work on any instance sharing the folder and the secret; forged, altered and
expired links are 403/410; ``retention_days`` deletes old images. Real app, real sockets."""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from imagegate.errors import ConfigError
from imagegate.server import ServerOptions, create_app
from imagegate.server.files import UrlSigner, sweep
from PIL import Image

from tests.server.kit import a1111_settings, gateway

GEN = "/v1/images/generations"
KEY = "sk-files-test"
SECRET = "a-shared-secret-of-32-characters!"


async def _url_answer(http: aiohttp.ClientSession, base: str, n: int = 1) -> list[str]:
    body = {"prompt": "a lighthouse", "size": "256x256", "response_format": "url", "n": n}
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(base + GEN, json=body, headers=headers) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
    return [item["url"] for item in answer["data"]]


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes, Any]:
    async with http.get(url) as resp:  # no Authorization header: what a browser's <img> does
        return resp.status, await resp.read(), resp.headers


def _relink(url: str, base: str) -> str:
    """The same path and query on another instance."""
    parts = urlsplit(url)
    return f"{base}{parts.path}?{parts.query}"


async def test_a_url_answer_opens_without_a_header_even_behind_an_api_key(
    a1111_url: str, tmp_path: Path
) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (base, _), aiohttp.ClientSession() as http:
        (url,) = await _url_answer(http, base)
        status, data, headers = await _get(http, url)
    assert status == 200 and headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (256, 256)
    query = parse_qs(urlsplit(url).query)
    assert int(query["expires"][0]) - time.time() == pytest.approx(3600, abs=60)
    assert "max-age=" in headers["Cache-Control"]


async def test_links_work_after_a_restart_and_on_another_instance_sharing_folder_and_secret(
    a1111_url: str, tmp_path: Path
) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    async with aiohttp.ClientSession() as http:
        async with gateway(settings, ServerOptions(api_keys=(KEY,))) as (base, _):
            urls = await _url_answer(http, base, n=2)  # secret: generated, kept in the state dir
        async with gateway(settings) as (base, _):  # restarted, same state dir
            assert [(await _get(http, _relink(u, base)))[0] for u in urls] == [200, 200]

        shared = ServerOptions(url_secret=SECRET, state_dir=tmp_path / "unused")
        async with gateway(settings, shared) as (one, _):
            (url,) = await _url_answer(http, one)
        async with gateway(settings, shared) as (two, _):  # another instance
            status, _data, _h = await _get(http, _relink(url, two))
            assert status == 200
        other = ServerOptions(url_secret="another-secret-of-enough-length")
        async with gateway(settings, other) as (three, _):
            status, data, _h = await _get(http, _relink(url, three))
            assert status == 403 and json.loads(data)["error"]["code"] == "invalid_signature"


async def test_forged_altered_and_expired_links_are_403_and_410(a1111_url: str, tmp_path: Path) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    options = ServerOptions(url_secret=SECRET)
    async with gateway(settings, options) as (base, _), aiohttp.ClientSession() as http:
        (url,) = await _url_answer(http, base)
        parts = urlsplit(url)
        q = parse_qs(parts.query)
        expires, sig = q["expires"][0], q["sig"][0]
        day, name = parts.path.split("/")[-2:]
        other_name = name.replace(name[7:15], "0" * 8)
        cases = {
            "no query": f"{base}{parts.path}",
            "altered expiry": f"{base}{parts.path}?expires={int(expires) + 1}&sig={sig}",
            "altered path": f"{base}/v1/files/{day}/{other_name}?expires={expires}&sig={sig}",
            "forged signature": f"{base}{parts.path}?expires={expires}&sig={'A' * 43}",
            "junk": f"{base}{parts.path}?expires=soon&sig=%00%0d%0a",
        }
        for what, link in cases.items():
            status, data, _h = await _get(http, link)
            assert status == 403, what
            assert json.loads(data)["error"]["code"] == "invalid_signature", what
        past = UrlSigner(SECRET.encode(), ttl_s=60, clock=lambda: time.time() - 3600)
        status, data, _h = await _get(http, f"{base}{parts.path}?{past.query(f'{day}/{name}')}")
        assert status == 410 and json.loads(data)["error"]["code"] == "link_expired"


async def test_nothing_from_the_url_reaches_the_disk_unchecked(a1111_url: str, tmp_path: Path) -> None:
    """Even a correctly signed path is served only if it is shaped as the store names files."""
    settings = a1111_settings(a1111_url, tmp_path)
    secret_file = tmp_path / "out" / "2026-01-01" / "secret.txt"
    secret_file.parent.mkdir(parents=True)
    secret_file.write_text("not an image")
    signer = UrlSigner(SECRET.encode(), ttl_s=60)
    async with gateway(settings, ServerOptions(url_secret=SECRET)) as (base, _), aiohttp.ClientSession() as http:
        for day, name in [("2026-01-01", "secret.txt"), ("..", "..%2Fetc%2Fpasswd"), ("%2e%2e", "x.png")]:
            link = f"{base}/v1/files/{day}/{name}?{signer.query(f'{day}/{name}')}"
            status, data, _h = await _get(http, link)
            assert status in (403, 404), (day, name, status)
            assert b"not an image" not in data


def test_the_generated_secret_is_kept_owner_only_outside_the_served_folder(
    a1111_url: str, tmp_path: Path, _state_dir: Path
) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    create_app(settings)
    secret = _state_dir / "imagegate" / "url-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert not secret.resolve().is_relative_to((tmp_path / "out").resolve())
    before = secret.read_bytes()
    create_app(settings)  # a second start keeps it
    assert secret.read_bytes() == before
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="readable by others: chmod 600"):
        create_app(settings)


def test_a_bad_secret_or_a_state_dir_inside_the_served_folder_is_one_line(
    a1111_url: str, tmp_path: Path
) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    with pytest.raises(ConfigError, match="^environment variable IMAGEGATE_URL_SECRET: must be at least 16"):
        create_app(settings, ServerOptions(url_secret="short"))
    with pytest.raises(ConfigError, match="inside the served folder"):
        create_app(settings, ServerOptions(state_dir=tmp_path / "out" / "state"))


def _stored(root: Path, day: str, name: str, age_days: float) -> Path:
    path = root / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")
    when = time.time() - age_days * 86400
    os.utime(path, (when, when))
    return path


def test_sweep_deletes_only_old_images_named_as_the_store_names_them(tmp_path: Path) -> None:
    old = _stored(tmp_path, "2026-01-01", "101010-0123abcd.png", age_days=10)
    fresh = _stored(tmp_path, "2026-01-09", "101010-89abcdef.jpg", age_days=0.5)
    foreign = _stored(tmp_path, "2026-01-01", "notes.txt", age_days=10)
    assert sweep(tmp_path, now=time.time(), max_age_s=7 * 86400) == 1
    assert not old.exists() and fresh.exists() and foreign.exists()


async def test_retention_days_deletes_old_images_in_the_background(a1111_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = _stored(out, "2026-01-01", "101010-0123abcd.png", age_days=3)
    fresh = _stored(out, "2026-01-03", "101010-89abcdef.png", age_days=0.1)
    settings = a1111_settings(a1111_url, tmp_path, retention_days=2)
    async with gateway(settings):
        for _ in range(1000):  # the first sweep runs at start, in a thread: wait (up to 20 s)
            if not old.parent.exists():  # for its last step, the emptied day folder removed
                break
            await asyncio.sleep(0.02)
    assert not old.exists() and not old.parent.exists() and fresh.exists()
