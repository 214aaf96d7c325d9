"""The bad-input campaign: whatever a caller, a config file or a provider sends, imagegate
answers with its own error (InvalidRequest, ConfigError, HTTP 4xx, bad_response) and keeps its
memory. The HTTP API's schema fuzzing lives in test_server_fuzz.py (schemathesis)."""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegate import ImageRequest, ImageService
from imagegate.backends.registry import KINDS, load_settings
from imagegate.config import ServiceSettings
from imagegate.errors import AllBackendsFailed, ConfigError, InvalidRequest
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import stability as stability_emulator

from tests.conftest import make_settings
from tests.server.kit import a1111_settings, gateway

GEN = "/v1/images/generations"
MB = 1024 * 1024

# --- ImageRequest: anything in, a request or InvalidRequest out -------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.integers(min_value=10**4300, max_value=10**4310)  # more digits than int() converts
    | st.text(max_size=30)
    | st.binary(max_size=10)
    | st.sampled_from(
        ["x" * 100_000, "\ud800", "a\x00b", "\u202e", "１０２４", "1024", "nan", "png"]
    )
)
values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=12,
)
fields = st.sampled_from(list(ImageRequest.model_fields)) | st.text(max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(fields, values, max_size=14) | values)
def test_any_request_document_is_a_request_or_a_short_invalid_request(data: Any) -> None:
    try:
        ImageRequest.parse(data)
    except InvalidRequest as exc:
        assert 0 < len(str(exc)) < 3000, "the message names the problem without echoing the input"


def test_a_prompt_of_100000_characters_is_refused_naming_the_limit_not_echoing_it() -> None:
    with pytest.raises(InvalidRequest) as info:
        ImageRequest.parse({"prompt": "p" * 100_000})
    assert info.value.field == "prompt"
    assert "1..4000" in str(info.value) and "ppppp" not in str(info.value)


@pytest.mark.parametrize(
    "value",
    [10**5000, [1] * 100_000, {"a": [[[[[1]]]]]}, float("nan"), b"\xff\xfe"],
    ids=["5000-digit int", "100000-item list", "nested", "nan", "bytes"],
)
def test_values_that_cannot_be_printed_whole_are_shown_shortened(value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        ImageRequest.parse({"prompt": "p", "width": value})
    assert info.value.field == "width" and len(str(info.value)) < 200


# --- TOML config documents: anything in, Settings or ConfigError out -------------------------

_KNOWN_KEYS = sorted(
    {
        *ServiceSettings.model_fields,
        "name",
        "kind",
        "base_url",
        "api_key_env",
        "space",
        "src",
        "inputs",
        "fixed",
        "connect_timeout_s",
        "max_image_bytes",
        "priority",
        "ca_bundle",
    }
)
toml_keys = st.sampled_from(_KNOWN_KEYS) | st.text(max_size=8)
toml_scalars = (
    st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.datetimes()
    | st.sampled_from(
        [*KINDS, "http://127.0.0.1:9", "https://127.0.0.1:9/v1", "ftp://x", "owner/space", "p95"]
    )
)
toml_values = st.recursive(
    toml_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(toml_keys, kids, max_size=3),
    max_leaves=10,
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "service": st.dictionaries(toml_keys, toml_values, max_size=6) | toml_scalars,
        "backend": st.lists(st.dictionaries(toml_keys, toml_values, max_size=8), max_size=3)
        | toml_values,
        "extra": toml_values,
    },
)
SECRETS = {"OPENAI_API_KEY": "k", "NOVITA_API_KEY": "k", "STABILITY_API_KEY": "k", "HF_TOKEN": "t"}


def toml_value(value: Any) -> str:
    """A value as TOML (inline tables and arrays; strings as JSON-escaped basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items())
            + "}"
        )
    return json.dumps(value)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toml") / "imagegate.toml"


@contextmanager
def loads_or_config_error(path: Path) -> Iterator[None]:
    try:
        load_settings(path, environ=dict(SECRETS), dotenv=False)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)), "a config error names the file"
    yield


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents)
def test_any_toml_document_loads_or_raises_config_error(
    config_file: Path, doc: dict[str, Any]
) -> None:
    config_file.write_text("\n".join(f"{k} = {toml_value(v)}" for k, v in doc.items()) + "\n")
    with loads_or_config_error(config_file):
        pass


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_as_a_config_file_load_or_raise_config_error(
    config_file: Path, raw: bytes
) -> None:
    config_file.write_bytes(raw)
    with loads_or_config_error(config_file):
        pass


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"[service]\n# caf\xe9 in Latin-1\ndeadline_s = 3\n", r"not UTF-8 text \(byte 0xe9"),
        (b"[service]\ndeadline_s = " + b"9" * 5000 + b"\n", "not valid TOML"),
    ],
)
def test_undecodable_config_files_are_config_errors(tmp_path: Path, raw: bytes, says: str) -> None:
    path = tmp_path / "imagegate.toml"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=says):
        load_settings(path, environ={}, dotenv=False)


def test_a_dotenv_file_that_is_not_utf8_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_bytes(b"A1111_URL=http://127.0.0.1:7860\nNOTE=caf\xe9\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^\.env: the file is not UTF-8 text"):
        load_settings(None)


# --- the HTTP API: malformed, oversized and hostile bodies are 4xx, short, and send nothing -----


@pytest.fixture
async def server(a1111_url: str, tmp_path: Path) -> AsyncIterator[str]:
    async with gateway(a1111_settings(a1111_url, tmp_path)) as (url, _app):
        yield url


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"prompt": "caf\xe9"}', None),  # Latin-1, not UTF-8
        (b"\xff\xfe\x00{", None),
        (b'{"prompt": "p", "seed": ' + b"9" * 5000 + b"}", None),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"prompt": "p", "n": [' + b"1," * 50_000 + b"1]}", "n"),
        (json.dumps({"prompt": "p" * 100_000}).encode(), "prompt"),
        (b'{"prompt": "\\ud800"}', None),  # a lone surrogate
        (b'{"prompt": "p", "guidance_scale": NaN}', None),
        (b'{"prompt": "p", "size": "99999999999x64"}', "size"),
    ],
    ids=[
        "latin-1",
        "binary",
        "5000-digit seed",
        "100000-deep",
        "100000-item n",
        "100000-char prompt",
        "lone surrogate",
        "NaN",
        "huge size",
    ],
)
async def test_hostile_bodies_are_400_in_the_openai_shape_and_reach_no_backend(
    server: str, knobs: Knobs, body: bytes, param: str | None
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server + GEN, data=body, headers={"Content-Type": "application/json"}) as resp,
    ):
        text = await resp.read()
    assert resp.status == 400, text[:300]
    assert len(text) < 2000, "the error does not echo the body back"
    error = json.loads(text)["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert not [r for r in knobs.requests if r.path == "/sdapi/v1/txt2img"]


# --- providers: a 50 MB body, bytes that are not UTF-8, image bombs ---------------------------


@contextmanager
def peak_rss_growth() -> Iterator[list[float]]:
    """Yields a list that holds, afterwards, how far RSS peaked above its level at entry (MiB)."""
    status = Path("/proc/self/status")

    def field(name: str) -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith(name))
        return int(line.split()[1]) / 1024

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start, out = field("VmRSS:"), []
    yield out
    out.append(field("VmHWM:") - start)


def fixed_answer_app(body: bytes, status: int = 200) -> web.Application:
    """An OpenAI-compatible server that answers every generation with ``body``."""

    async def generations(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_post(GEN, generations)
    return app


def openai_table(name: str, url: str, priority: int, **keys: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "openai",
        "base_url": url,
        "priority": priority,
        "api_key_required": False,
        "api_key_env": "NO_KEY",
        "connect_timeout_s": 1.0,
        "read_timeout_s": 10.0,
        **keys,
    }


@lru_cache(maxsize=4)
def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: a few kB on the wire, width*height bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(packer.compress(block) for _ in range(height // 1000)) + packer.compress(
        row * (height % 1000)
    )
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height"), [(5000, 5000), (30000, 30000)], ids=["25 MP", "900 MP"]
)
async def test_an_image_bomb_is_bad_response_without_decoding_it(
    tmp_path: Path, a1111_url: str, width: int, height: int
) -> None:
    bomb = png_bomb(width, height)
    assert len(bomb) < 2 * MB
    answer = json.dumps(
        {"created": 0, "data": [{"b64_json": base64.b64encode(bomb).decode()}]}
    ).encode()
    async with serve_app(fixed_answer_app(answer)) as url:
        settings = make_settings(
            [
                openai_table("bomber", url, 0),
                {"name": "good", "kind": "a1111", "base_url": a1111_url, "priority": 1},
            ],
            tmp_path=tmp_path,
        )
        async with ImageService(settings) as service:
            with peak_rss_growth() as growth:
                result = await service.generate(ImageRequest(prompt="p", width=64, height=64))
    assert result.backend == "good"
    first = result.attempts[0]
    assert (first.backend, first.outcome) == ("bomber", "bad_response")
    assert "decompression" in (first.error or "").lower()
    assert growth[0] < 64, f"RSS peaked {growth[0]:.0f} MiB above its start: the bomb was decoded"


@pytest.mark.parametrize("cap_mb", [None, 2], ids=["default 32 MiB cap", "configured 2 MiB cap"])
async def test_a_50_mb_provider_body_is_cut_off_at_max_image_bytes(
    tmp_path: Path, a1111_url: str, local_ca: LocalCA, cap_mb: int | None
) -> None:
    knobs = Knobs()
    knobs.arm("not_image", size=50 * MB)  # 50 MB, chunked: the length is not known up front
    cap = {} if cap_mb is None else {"max_image_bytes": cap_mb * MB}
    async with serve_app(stability_emulator.create_app(knobs=knobs), tls=local_ca) as url:
        big = {
            "name": "big",
            "kind": "stability",
            "base_url": url,
            "ca_bundle": str(local_ca.ca_file),
            "read_timeout_s": 20.0,
            **cap,
        }
        good = {"name": "good", "kind": "a1111", "base_url": a1111_url, "priority": 1}
        settings = make_settings(
            [big, good], environ={"STABILITY_API_KEY": "test-key"}, tmp_path=tmp_path
        )
        async with ImageService(settings) as service:
            with peak_rss_growth() as growth:
                result = await service.generate(ImageRequest(prompt="p", width=64, height=64))
    assert result.backend == "good"
    first = result.attempts[0]
    assert (first.backend, first.outcome) == ("big", "bad_response")
    assert f"max_image_bytes={(cap_mb or 32) * MB}" in (first.error or "")
    limit = 1.5 * (cap_mb or 32) + 8  # the capped read, not the 50 MB (nor a copy of it)
    assert growth[0] < limit, f"RSS peaked {growth[0]:.0f} MiB above its start"


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b"\xff\xfe\x00\x80 not json, not UTF-8", "bad_response"),
        (200, b'{"data": [{"b64_json": "\xff\xfe"}]}', "bad_response"),
        (500, b"\xff\xfe upstream \x80 exploded", "server_error"),
    ],
    ids=["200 binary", "200 binary in JSON", "500 binary"],
)
async def test_a_provider_answering_bytes_that_are_not_utf8_is_a_classified_failure(
    tmp_path: Path, status: int, body: bytes, outcome: str
) -> None:
    async with serve_app(fixed_answer_app(body, status)) as url:
        settings = make_settings([openai_table("odd", url, 0)], tmp_path=tmp_path)
        async with ImageService(settings) as service:
            with pytest.raises(AllBackendsFailed) as info:
                await service.generate(ImageRequest(prompt="p", width=64, height=64))
    attempt = info.value.attempts[0]
    assert attempt.outcome == outcome and attempt.error
    attempt.model_dump_json()  # the trail stays serialisable (no raw bytes in it)
