"""The operator page's routes over HTTP (no browser): the page and its files (nothing from the
URL reaches the disk, CSP, gzip, ETag), ``[service] ui = false``, the API key on every data
route, the gallery (newest first, pages, only the store's own files), the live stream's
frames (a breaker opening, a request from start to end) and its bound on open pages."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from imagegate.server import ServerOptions
from imagegate.server.board import MAX_LISTENERS
from imagegate.server.ui import load_assets

from tests.conftest import make_settings
from tests.server.kit import a1111_settings, closed_port_url, gateway

KEY = "sk-ui-routes-0123456789"
GEN = "/v1/images/generations"
DATA_ROUTES = ("/v1/ui/board", "/v1/ui/live", "/v1/ui/gallery")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture
async def server(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, _):
        yield url


async def test_the_page_is_served_with_a_strict_content_security_policy(
    server: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(server + "/ui") as resp:
        body = await resp.text()
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/html; charset=utf-8"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="ui/main.js">' in body
    assert "http://" not in body and "https://" not in body  # nothing from a CDN
    async with http.get(server + "/ui/", allow_redirects=False) as resp:
        assert resp.status == 308 and resp.headers["Location"] == "../ui"


async def test_every_file_of_the_page_is_served_gzipped_with_an_etag(
    server: str, http: aiohttp.ClientSession
) -> None:
    assets = load_assets()
    names = [n for n in assets if n != "index.html"]
    assert {"main.js", "ui.css", "sse.js"} <= set(names)
    for name in names:
        async with http.get(f"{server}/ui/{name}", headers={"Accept-Encoding": "gzip"},
                            auto_decompress=False) as resp:
            raw = await resp.read()
            assert resp.status == 200 and resp.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(raw) == assets[name].body
            etag = resp.headers["ETag"]
        async with http.get(f"{server}/ui/{name}", headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and await resp.read() == b""
        async with http.get(f"{server}/ui/{name}", headers={"Accept-Encoding": "identity"}) as resp:
            assert await resp.read() == assets[name].body


@pytest.mark.parametrize("path", [
    "/ui/nope.js", "/ui/index.html", "/ui/..%2fapp.py", "/ui/%2e%2e%2fserver%2fapp.js",
    "/ui/../server/app.py", "/ui/Main.js", "/ui/ui_static", "/ui/main.js/x",
])
async def test_only_the_pages_own_files_are_served(
    server: str, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.get(server + path, allow_redirects=False) as resp:
        assert resp.status == 404, path


async def test_ui_false_leaves_no_page_and_no_data_route(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway(a1111_settings(a1111_url, tmp_path, ui=False)) as (url, _):
        for path in ("/ui", "/ui/main.js", *DATA_ROUTES):
            async with http.get(url + path) as resp:
                assert resp.status == 404, path
        async with http.get(url + "/v1/backends") as resp:
            assert resp.status == 200


async def test_with_a_key_the_page_is_open_but_every_data_route_wants_the_key(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    options = ServerOptions(api_keys=(KEY,))
    async with gateway(a1111_settings(a1111_url, tmp_path), options) as (url, _):
        async with http.get(url + "/ui") as resp:
            assert resp.status == 200 and "local" not in await resp.text()  # no data in it
        for path in DATA_ROUTES:
            for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
                async with http.get(url + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
            async with http.get(f"{url}{path}?key={KEY}&api_key={KEY}") as resp:
                assert resp.status == 401, "a key in the URL is not a key"
        auth = {"Authorization": f"Bearer {KEY}"}
        async with http.get(url + "/v1/ui/board", headers=auth) as resp:
            assert resp.status == 200 and [b["name"] for b in (await resp.json())["backends"]] == ["local"]
        async with http.get(url + "/v1/ui/live", headers=auth) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            assert (await resp.content.readline()).decode().strip() == "event: board"


async def test_the_snapshot_holds_each_backends_card(server: str, http: aiohttp.ClientSession) -> None:
    async with http.post(server + GEN, json={"prompt": "x", "size": "64x64"}) as resp:
        assert resp.status == 200
    async with http.get(server + "/v1/ui/board") as resp:
        snap = await resp.json()
    (row,) = snap["backends"]
    assert row["name"] == "local" and row["state"] == "closed" and row["max_concurrency"] == 64
    assert row["recent_requests"] == 1 and row["success_rate"] == 1.0
    assert row["latency_p50_s"] > 0 and row["latency_p95_s"] >= row["latency_p50_s"]
    assert any(line.startswith("sizes:") for line in row["capabilities"])
    assert isinstance(snap["now"], float) and snap["requests"] == [] and snap["version"]


async def frames(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """The stream's events, as (name, data)."""
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


async def next_frame(
    stream: AsyncIterator[tuple[str, dict[str, Any]]], name: str, test: Any = lambda d: True
) -> dict[str, Any]:
    async with asyncio.timeout(5):  # a generous bound: the frames come within ms
        async for got, data in stream:
            if got == name and test(data):
                return data
    raise AssertionError(f"the stream ended before a {name} frame")


async def test_the_live_stream_pushes_a_breaker_opening_and_a_request_from_start_to_end(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings([
        {"name": "gone", "kind": "a1111", "base_url": closed_port_url(), "max_concurrency": 2},
        {"name": "local", "kind": "a1111", "base_url": a1111_url, "priority": 1},
    ], service={"output_dir": tmp_path / "out", "probe_interval_s": 60.0}, tmp_path=tmp_path)
    async with gateway(settings) as (url, _), http.get(url + "/v1/ui/live") as live:
        stream = frames(live)
        first = await next_frame(stream, "board")
        assert {b["name"]: b["state"] for b in first["backends"]} == {"local": "closed", "gone": "closed"}
        async with http.post(url + GEN, json={"prompt": "a fox", "size": "64x64"}) as resp:
            assert resp.status == 200 and resp.headers["x-imagegate-backend"] == "local"
        seen: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(5):  # a generous bound: the frames come within ms
            async for name, data in stream:  # until the request ended and the breaker opened
                seen.append((name, data))
                if {(n, d.get("status") or d.get("state")) for n, d in seen} >= {
                        ("request", "succeeded"), ("backend", "open")}:
                    break
        opened = [d for n, d in seen if n == "backend" and d["name"] == "gone" and d["state"] == "open"]
        assert opened, seen
        assert opened[0]["open_until"] > opened[0]["now"]
        assert opened[0]["breaker_reason"] == "connect_failed" and opened[0]["success_rate"] == 0.0
        requests = [d for n, d in seen if n == "request"]
        assert len({r["id"] for r in requests}) == 1
        assert requests[0]["prompt"] == "a fox" and requests[0]["size"] == "64x64"
        done = requests[-1]
        assert done["backend"] == "local" and done["ended_at"] and done["progress"]["fraction"] == 1.0
        assert [(f["from"], f["to"]) for f in done["failovers"]] == [("gone", "local")]
        assert "connect_failed" in done["failovers"][0]["reason"]


async def test_open_pages_are_bounded(server: str, http: aiohttp.ClientSession) -> None:
    streams = [await http.get(server + "/v1/ui/live") for _ in range(MAX_LISTENERS)]
    try:
        assert all(s.status == 200 for s in streams)
        async with http.get(server + "/v1/ui/live") as resp:
            assert resp.status == 503 and (await resp.json())["error"]["code"] == "ui_busy"
    finally:
        for s in streams:
            s.close()
    async def reopened() -> int:
        async with http.get(server + "/v1/ui/live") as resp:
            return resp.status
    for _ in range(50):  # the server notices the closed streams (bounded wait)
        if await reopened() == 200:
            break
        await asyncio.sleep(0.1)
    assert await reopened() == 200


async def _gallery(http: aiohttp.ClientSession, url: str, query: str = "") -> dict[str, Any]:
    async with http.get(f"{url}/v1/ui/gallery{query}") as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def test_the_gallery_lists_the_newest_images_with_their_parameters_in_pages(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, _):
        for i in range(3):
            body = {"prompt": f"picture {i}", "size": "64x64", "response_format": "url", "seed": i}
            async with http.post(url + GEN, json=body) as resp:
                assert resp.status == 200
        out = tmp_path / "out"
        (day,) = out.iterdir()
        (out / "notes.txt").write_text("not an image")
        (day / "holiday.png").write_bytes(b"not ours")
        (day / "235959-0000000g.png").write_bytes(b"bad name")
        os.symlink("/etc/hostname", day / "235959-aaaaaaaa.png")  # named like ours: a link
        first = await _gallery(http, url, "?limit=2")
        assert [i["prompt"] for i in first["data"]] == ["picture 2", "picture 1"]
        item = first["data"][0]
        assert item["backend"] == "local" and item["fields"]["Seed"] == "2"
        assert item["parameters"].startswith("picture 2\nSeed: 2, Size: 64x64")
        assert item["path"].startswith(day.name + "/") and item["time"] > 0
        rest = await _gallery(http, url, f"?limit=2&before={first['next']}")
        assert [i["prompt"] for i in rest["data"]] == ["picture 0"] and rest["next"] is None
        async with http.get(f"{url}/{item['url']}") as resp:  # the page's relative link, signed
            assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("query, message", [
    ("?limit=0", "limit: must be a whole number 1..100 (got '0')"),
    ("?limit=101", "limit: must be a whole number 1..100 (got '101')"),
    ("?limit=%C2%B2", "limit: must be a whole number 1..100"),
    ("?limit=ten", "limit: must be a whole number 1..100 (got 'ten')"),
    ("?before=../../etc/passwd", "before: must be the 'next' cursor of a gallery page"),
    ("?before=1:2026-01-01/x.png", "before: must be the 'next' cursor of a gallery page"),
    ("?before=2026-01-01/101010-aaaaaaaa.png", "before: must be the 'next' cursor"),
])
async def test_bad_gallery_queries_are_400_naming_the_field(
    server: str, http: aiohttp.ClientSession, query: str, message: str
) -> None:
    async with http.get(f"{server}/v1/ui/gallery{query}") as resp:
        body = await resp.json()
        assert resp.status == 400 and body["error"]["message"].startswith(message), body
        assert body["error"]["param"] == query[1:].split("=")[0]


async def test_shutdown_ends_the_open_pages_streams(a1111_url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):  # generous: without the end, the drain would wait 32 s
            async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, _):
                live = await http.get(url + "/v1/ui/live")
                assert (await live.content.readline()).decode().strip() == "event: board"
            rest = await live.content.read()  # the server closed it: EOF, not a hang
        assert b"event:" not in rest
        live.close()
