"""The HTTP API against the A1111 emulator, over real loopback sockets."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from imagegate.errors import ConfigError
from imagegate.server import ServerOptions, create_app
from imagegate.testing import Knobs
from PIL import Image
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from tests.conftest import make_settings
from tests.server.kit import a1111_settings, closed_port_url, gateway

GEN = "/v1/images/generations"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def server(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    settings = a1111_settings(
        a1111_url, tmp_path, aliases={"dall-e-3": "local", "gpt-image-1": "*"}
    )
    async with gateway(settings) as (url, _app):
        yield url


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url + GEN, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers


async def test_b64_json_answer_decodes_to_the_requested_size_with_gateway_headers(
    server: str, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await post(
        http, server, {"prompt": "a red fox", "size": "512x384", "n": 2}
    )
    assert status == 200, body
    assert len(body["data"]) == 2 and isinstance(body["created"], int)
    for item in body["data"]:
        with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as img:
            assert img.size == (512, 384)
    assert headers["x-imagegate-backend"] == "local"
    assert headers["x-imagegate-attempts"] == "1"
    assert headers["x-request-id"]


async def test_extensions_reach_the_backend(
    server: str, http: aiohttp.ClientSession, knobs: Knobs
) -> None:
    body = {
        "prompt": "p",
        "negative_prompt": "blurry",
        "seed": 42,
        "steps": 12,
        "guidance_scale": 5.5,
        "size": "256x256",
        "user": "u1",
        "quality": "hd",
        "style": "vivid",
    }
    status, answer, _ = await post(http, server, body)
    assert status == 200, answer
    sent = [r for r in knobs.requests if r.path == "/sdapi/v1/txt2img"][-1].body
    assert (sent["negative_prompt"], sent["seed"], sent["steps"], sent["cfg_scale"]) == (
        "blurry",
        42,
        12,
        5.5,
    )
    assert (sent["width"], sent["height"]) == (256, 256)


async def test_request_id_is_echoed_when_safe_and_replaced_when_not(
    server: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(server + "/v1/backends", headers={"x-request-id": "abc-123"}) as r:
        assert r.headers["x-request-id"] == "abc-123"
    async with http.get(server + "/v1/backends", headers={"x-request-id": "bad id\t<>"}) as r:
        assert r.headers["x-request-id"] != "bad id\t<>"


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"prompt": ""}, "prompt", "prompt"),
        ({"prompt": "x", "n": 9}, "n", "1..8"),
        ({"prompt": "x", "n": "2"}, "n", "integer"),
        ({"prompt": "x", "size": "1024*1024"}, "size", "WIDTHxHEIGHT"),
        ({"prompt": "x", "size": "4096x4096"}, "size", "2048"),
        ({"prompt": "x", "size": "500x500"}, "size", "multiple of 8"),
        ({"prompt": "x", "response_format": "jpeg"}, "response_format", "b64_json"),
        ({"prompt": "x", "stream": "yes"}, "stream", "boolean"),
        ({"prompt": "x", "partial_images": 4}, "partial_images", "3"),
        ({"prompt": "x", "webhook_url": "http://h/x"}, "webhook_url", "Prefer: respond-async"),
        ({"n": 1}, "prompt", "required"),
    ],
)
async def test_validation_errors_are_400_naming_the_field(
    server: str, http: aiohttp.ClientSession, body: dict[str, Any], param: str, needle: str
) -> None:
    status, answer, _ = await post(http, server, body)
    assert status == 400
    error = answer["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b'"a string"', b"[1, 2]", b"null"])
async def test_malformed_json_or_non_object_body_is_400(
    server: str, http: aiohttp.ClientSession, raw: bytes
) -> None:
    status, answer, _ = await post(http, server, raw)
    assert status == 400
    assert answer["error"]["param"] is None and answer["error"]["message"]


async def test_openai_sizes_and_aliases_map_to_backends(
    server: str, http: aiohttp.ClientSession, knobs: Knobs
) -> None:
    for size, expected in [
        ("auto", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("256x256", (256, 256)),
    ]:
        status, body, _ = await post(
            http, server, {"prompt": "x", "size": size, "model": "dall-e-3"}
        )
        assert status == 200, body
        sent = [r for r in knobs.requests if r.path == "/sdapi/v1/txt2img"][-1].body
        assert (sent["width"], sent["height"]) == expected
    status, body, headers = await post(
        http, server, {"prompt": "x", "size": "256x256", "model": "gpt-image-1"}
    )
    assert status == 200 and headers["x-imagegate-backend"] == "local"
    async with http.get(server + "/v1/models") as r:
        ids = {m["id"] for m in (await r.json())["data"]}
    assert ids == {"local", "dall-e-3", "gpt-image-1"}


async def test_reject_and_strict_fields_keep_refusing_unknown_models_and_fields(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession, knobs: Knobs
) -> None:
    settings = a1111_settings(
        a1111_url, tmp_path, aliases={"dall-e-3": "local"}, unknown_model="reject",
        strict_fields=True,
    )
    async with gateway(settings) as (url, _):
        status, answer, _ = await post(http, url, {"prompt": "x", "model": "dall-e-2"})
        assert (status, answer["error"]["param"]) == (400, "model")
        assert "dall-e-3" in answer["error"]["message"]  # the names that are known
        status, answer, _ = await post(http, url, {"prompt": "x", "colour": "red"})
        assert (status, answer["error"]["param"]) == (400, "colour")
        assert "Unknown parameter: 'colour'" in answer["error"]["message"]
        status, answer, _ = await post(http, url, {"prompt": "x", "cfg_scale": 5})  # mapped: ok
        assert status == 200, answer
    assert not [r for r in knobs.requests if r.path == "/sdapi/v1/txt2img" and "colour" in r.body]


def test_an_alias_to_an_unknown_backend_is_a_config_error(tmp_path: Path) -> None:
    settings = a1111_settings("http://127.0.0.1:9", tmp_path, aliases={"dall-e-3": "novita"})
    with pytest.raises(ConfigError, match="aliases.*'novita'"):
        create_app(settings)


async def test_body_over_the_limit_is_413_declared_or_chunked(
    a1111_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = a1111_settings(a1111_url, tmp_path)
    async with gateway(settings, ServerOptions(max_body_bytes=4096)) as (url, _):
        big = json.dumps({"prompt": "x" * 5000}).encode()
        status, body, _ = await post(http, url, big)
        assert status == 413 and body["error"]["code"] == "request_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        async with http.post(url + GEN, data=chunks()) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"


async def test_all_backends_down_is_502_with_the_attempt_trail(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    backends = [
        {"name": "first", "kind": "a1111", "base_url": closed_port_url(), "connect_timeout_s": 0.5},
        {
            "name": "second",
            "kind": "a1111",
            "base_url": closed_port_url(),
            "connect_timeout_s": 0.5,
        },
    ]
    settings = make_settings(
        backends, service={"output_dir": tmp_path / "o", "retry_backoff_s": 0}, tmp_path=tmp_path
    )
    async with gateway(settings) as (url, _):
        status, body, headers = await post(http, url, {"prompt": "x", "size": "64x64"})
    assert status == 502
    error = body["error"]
    assert error["code"] == "all_backends_failed" and error["type"] == "api_error"
    assert (
        "first: connect_failed" in error["message"] and "second: connect_failed" in error["message"]
    )
    assert {a["backend"] for a in error["attempts"]} == {"first", "second"}
    assert all(a["outcome"] == "connect_failed" for a in error["attempts"])
    assert int(headers["x-imagegate-attempts"]) >= 2


async def test_deadline_passing_is_504(
    a1111_url: str, knobs: Knobs, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    knobs.latency_s = 3.0
    settings = a1111_settings(a1111_url, tmp_path, deadline_s=0.3)
    async with gateway(settings) as (url, _):
        status, body, _ = await post(http, url, {"prompt": "x", "size": "64x64"})
    assert status == 504
    assert body["error"]["code"] == "deadline_exceeded"


async def test_a_secret_echoed_by_a_provider_is_redacted(
    a1111_url: str, knobs: Knobs, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    secret = "hunter2-very-secret"
    settings = make_settings(
        [
            {
                "name": "local",
                "kind": "a1111",
                "base_url": a1111_url,
                "username_env": "A_USER",
                "password_env": "A_PASS",
            }
        ],
        service={"output_dir": tmp_path / "o", "max_attempts": 1},
        environ={"A_USER": "me", "A_PASS": secret},
        tmp_path=tmp_path,
    )
    knobs.arm("status", count=10, status=500, body=f"bad credentials {secret} for me")
    async with gateway(settings) as (url, _):
        status, body, _ = await post(http, url, {"prompt": "x", "size": "64x64"})
    assert status == 502
    assert secret not in json.dumps(body) and "***" in body["error"]["message"]


async def test_unknown_routes_and_methods_answer_in_the_openai_error_shape(
    server: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(server + "/v1/nothing") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    async with http.get(server + GEN) as r:
        assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
        assert "POST" in r.headers["Allow"]


async def test_health_readiness_backends_and_openapi_routes(
    server: str, http: aiohttp.ClientSession
) -> None:
    async with http.get(server + "/healthz") as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "ok" and len(body["instance"]) == 12
    async with http.get(server + "/readyz") as r:
        assert r.status == 200 and (await r.json())["usable_backends"] == 1
    async with http.get(server + "/v1/backends") as r:
        table = await r.json()
    assert table["ready"] is True
    assert table["data"][0]["name"] == "local" and table["data"][0]["state"] == "closed"
    async with http.get(server + "/openapi.json") as r:
        doc = await r.json()
    assert set(doc["paths"]) >= {
        GEN,
        "/v1/files/{day}/{name}",
        "/v1/backends",
        "/healthz",
        "/readyz",
        "/metrics",
    }


async def test_readyz_is_503_when_no_backend_is_usable(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = make_settings(
        [{"name": "gone", "kind": "a1111", "base_url": closed_port_url()}],
        service={"output_dir": tmp_path / "o", "probe_interval_s": 60.0},
        tmp_path=tmp_path,
    )
    async with gateway(settings) as (url, app):
        from imagegate.server.state import SERVICE

        await app[SERVICE].probe_all(timeout=0.5)
        async with http.get(url + "/readyz") as r:
            assert r.status == 503
            assert (await r.json())["usable_backends"] == 0


async def test_metrics_count_requests_by_backend_and_outcome(
    server: str, http: aiohttp.ClientSession
) -> None:
    await post(http, server, {"prompt": "x", "size": "64x64"})
    await post(http, server, {"prompt": ""})
    async with http.get(server + "/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    assert 'imagegate_generations_total{backend="local",outcome="ok"} 1.0' in text
    assert (
        'imagegate_http_requests_total{method="POST",route="/v1/images/generations",status="400"} 1.0'
        in text
    )
    assert 'imagegate_generation_duration_seconds_count{backend="local"} 1.0' in text
    assert 'imagegate_backend_state{backend="local",imagegate_backend_state="closed"} 1.0' in text
    assert "imagegate_http_in_flight_requests 1.0" in text  # this scrape itself
    # what a soak compares before and after its load (scripts/benchlib/soak_fleet.py)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["imagegate_event_loop_tasks"] >= 1 and values["imagegate_threads"] >= 1
    assert values["process_open_fds"] >= 3 and values["process_resident_memory_bytes"] > 10e6


async def test_one_access_log_line_per_request_with_request_id(
    server: str, http: aiohttp.ClientSession
) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs:
        await post(
            http, server, {"prompt": "x", "size": "64x64"}, headers={"x-request-id": "req-7"}
        )
    lines = [e for e in logs if e["event"] == "http_request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == "req-7" and line["status"] == 200
    assert line["route"] == GEN and line["backend"] == "local" and line["attempts"] == 1
    assert line["duration_s"] >= 0
    # the router's own lines for this request carry the same id
    assert all(e.get("request_id") == "req-7" for e in logs if e["event"] == "image_generated")
