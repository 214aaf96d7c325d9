"""API keys: Bearer on every /v1/ route, compared in constant time; probes stay open."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from imagegate.errors import ConfigError
from imagegate.server import ServerOptions
from imagegate.server import middleware as server_module

from tests.server.kit import a1111_settings, gateway

GEN = "/v1/images/generations"
BODY = json.dumps({"prompt": "x", "size": "64x64"})
KEYS = "sk-first-key-123, sk-second-key-456"


@pytest.fixture
async def secured(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    options = ServerOptions.from_environ({"IMAGEGATE_API_KEY": KEYS})
    async with gateway(a1111_settings(a1111_url, tmp_path), options) as (url, _):
        yield url


async def _status(
    url: str, path: str, headers: dict[str, str] | None = None, post: bool = False
) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        method = http.post if post else http.get
        sent = {**({"Content-Type": "application/json"} if post else {}), **(headers or {})}
        async with method(url + path, headers=sent, data=BODY if post else None) as r:
            return r.status, await r.text()


def test_api_keys_come_from_a_comma_separated_variable() -> None:
    options = ServerOptions.from_environ({"IMAGEGATE_API_KEY": " a-key ,b-key,, "})
    assert options.api_keys == ("a-key", "b-key")
    assert "a-key" not in repr(options)
    assert ServerOptions.from_environ({}).api_keys == ()


def test_bad_server_variables_are_config_errors_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="IMAGEGATE_MAX_BODY_BYTES"):
        ServerOptions.from_environ({"IMAGEGATE_MAX_BODY_BYTES": "lots"})
    with pytest.raises(ConfigError, match="IMAGEGATE_SHUTDOWN_GRACE_S"):
        ServerOptions.from_environ({"IMAGEGATE_SHUTDOWN_GRACE_S": "-1"})


async def test_without_configured_keys_every_route_is_open(a1111_url: str, tmp_path: Path) -> None:
    async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, _):
        assert (await _status(url, GEN, post=True))[0] == 200


async def test_a_missing_key_is_401_in_the_openai_shape(secured: str) -> None:
    status, text = await _status(secured, GEN, post=True)
    assert status == 401
    assert json.loads(text)["error"]["code"] == "invalid_api_key"
    for path in ("/v1/backends", "/v1/models", "/v1/files/whatever"):
        assert (await _status(secured, path))[0] == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk-wrong",
        "Bearer sk-first-key-12",
        "Basic c2stZmlyc3Qta2V5LTEyMw==",
        "Bearer ",
        "sk-first-key-123",
    ],
)
async def test_a_wrong_key_is_401_and_never_echoed(secured: str, header: str) -> None:
    status, text = await _status(secured, GEN, {"Authorization": header}, post=True)
    assert status == 401
    assert "sk-" not in text


async def test_a_non_ascii_key_is_401_not_a_crash(secured: str) -> None:
    status, _ = await _status(secured, "/v1/backends", {"Authorization": "Bearer cl\u00e9"})
    assert status == 401


@pytest.mark.parametrize("key", ["sk-first-key-123", "sk-second-key-456"])
async def test_any_configured_key_is_accepted(secured: str, key: str) -> None:
    status, text = await _status(secured, GEN, {"Authorization": f"Bearer {key}"}, post=True)
    assert status == 200, text
    assert (await _status(secured, "/v1/backends", {"Authorization": f"bearer {key}"}))[0] == 200


async def test_keys_are_compared_with_hmac_compare_digest_against_every_key(
    secured: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_module.hmac, "compare_digest", spy)
    status, _ = await _status(secured, "/v1/backends", {"Authorization": "Bearer sk-first-key-123"})
    assert status == 200
    # both keys were compared although the first one matched: no early exit to time
    assert [b for _, b in calls] == [b"sk-first-key-123", b"sk-second-key-456"]


async def test_probes_and_the_openapi_document_stay_open(secured: str) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert (await _status(secured, path))[0] == 200, path


async def test_metrics_need_the_key_when_metrics_auth_is_set(
    a1111_url: str, tmp_path: Path
) -> None:
    options = ServerOptions.from_environ({"IMAGEGATE_API_KEY": KEYS, "IMAGEGATE_METRICS_AUTH": "1"})
    async with gateway(a1111_settings(a1111_url, tmp_path), options) as (url, _):
        assert (await _status(url, "/metrics"))[0] == 401
        assert (await _status(url, "/metrics", {"Authorization": "Bearer sk-second-key-456"}))[
            0
        ] == 200
        assert (await _status(url, "/healthz"))[0] == 200
