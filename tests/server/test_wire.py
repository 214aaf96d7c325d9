"""The pure half of the HTTP API: OpenAI body -> ImageRequest, answers, errors, the document."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from imagegate.capabilities import Adjustment
from imagegate.errors import AllBackendsFailed, InvalidRequest
from imagegate.models import (
    MAX_SEED,
    Attempt,
    GeneratedImage,
    ImageFormat,
    ImageRequest,
    ImageResult,
)
from imagegate.server.errors import Redactor, api_error_for
from imagegate.server.openapi import openapi_document
from imagegate.server.wire import (
    adjustments_header,
    ignored_header,
    images_response,
    parse_generation,
    parse_size,
    resolve_model,
)

BACKENDS = ("local", "novita")
ALIASES = {"dall-e-3": "novita", "gpt-image-1": "*"}


def parse(body: object) -> object:
    return parse_generation(json.dumps(body).encode(), backends=BACKENDS, aliases=ALIASES)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (None, (1024, 1024)),
        ("auto", (1024, 1024)),
        ("1536x1024", (1536, 1024)),
        ("64x2048", (64, 2048)),
    ],
)
def test_sizes_parse_as_width_by_height(size: str | None, expected: tuple[int, int]) -> None:
    assert parse_size(size) == expected


@pytest.mark.parametrize(
    "size", ["1024", "1024X1024", "1024x", " 1024x1024", "-8x8", "1e3x8", "１０２４x8", "AUTO"]
)
def test_sizes_are_parsed_strictly(size: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_size(size)
    assert err.value.field == "size"


def test_model_is_a_backend_an_alias_or_absent() -> None:
    assert resolve_model(None, BACKENDS, ALIASES) is None
    assert resolve_model("local", BACKENDS, ALIASES) == "local"
    assert resolve_model("dall-e-3", BACKENDS, ALIASES) == "novita"
    assert resolve_model("gpt-image-1", BACKENDS, ALIASES) is None
    assert resolve_model("dall-e-2", BACKENDS, ALIASES) is None  # unknown_model = "route"
    with pytest.raises(InvalidRequest, match="known: dall-e-3, gpt-image-1, local, novita") as err:
        resolve_model("dall-e-2", BACKENDS, ALIASES, unknown_model="reject")
    assert err.value.field == "model"


def test_client_names_map_to_ours_and_unknown_fields_are_listed_not_refused() -> None:
    generation = parse(
        {"prompt": "p", "cfg_scale": 6.5, "sampler_name": "Euler a", "steps": 20, "seed": 3,
         "negative_prompt": "blur", "aspect_ratio": "1:1", "clip_skip": 2}
    )
    assert generation.request.guidance_scale == 6.5 and generation.request.sampler == "Euler a"  # type: ignore[attr-defined]
    assert (generation.request.steps, generation.request.seed) == (20, 3)  # type: ignore[attr-defined]
    assert generation.ignored == ("aspect_ratio", "clip_skip")  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest) as err:
        parse({"prompt": "p", "cfg_scale": "7"})  # mapped names are typed as ours
    assert err.value.field == "cfg_scale"
    with pytest.raises(InvalidRequest) as err:
        parse({"prompt": "p", "cfg_scale": 5, "guidance_scale": 7})
    assert err.value.field == "cfg_scale"
    with pytest.raises(InvalidRequest, match="Unknown parameter: 'aspect_ratio'") as err:
        parse_generation(b'{"prompt": "p", "aspect_ratio": "1:1"}', backends=BACKENDS,
                         aliases=ALIASES, strict_fields=True)
    assert err.value.field == "aspect_ratio"


def test_the_ignored_header_names_only_safe_names_and_at_most_twenty() -> None:
    assert ignored_header(["a", "b\r\nSet-Cookie: x", "c"]) == "a, c, +1 more"
    many = [f"f{i:02d}" for i in range(25)]
    assert ignored_header(many) == ", ".join(many[:20]) + ", +5 more"


def test_a_full_openai_body_becomes_our_request() -> None:
    generation = parse(
        {
            "prompt": "p",
            "n": 2,
            "size": "512x768",
            "response_format": "url",
            "model": "dall-e-3",
            "user": "u",
            "negative_prompt": "n",
            "seed": MAX_SEED,
            "steps": 20,
            "guidance_scale": 7,
            "output_format": "webp",
            "quality": "hd",
            "style": "vivid",
            "stream": False,
        }
    )
    assert generation.backend == "novita" and generation.response_format == "url"  # type: ignore[attr-defined]
    assert generation.request == ImageRequest(  # type: ignore[attr-defined]
        prompt="p",
        n=2,
        width=512,
        height=768,
        negative_prompt="n",
        seed=MAX_SEED,
        steps=20,
        guidance_scale=7.0,
        output_format=ImageFormat.WEBP,
    )


def test_nulls_mean_defaults_as_in_the_openai_sdk() -> None:
    generation = parse(
        {"prompt": "p", "n": None, "size": None, "response_format": None, "model": None}
    )
    assert generation.response_format == "b64_json"  # type: ignore[attr-defined]
    assert (generation.request.width, generation.request.n) == (1024, 1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "steps": 1.5}, "steps"),
        ({"prompt": "p", "guidance_scale": 31}, "guidance_scale"),
        ({"prompt": " "}, "prompt"),
        ({"prompt": "p", "n": True}, "n"),
        ({"prompt": "p", "output_format": "gif"}, "output_format"),
    ],
)
def test_each_invalid_field_is_named(body: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    assert err.value.field == field


def test_answers_carry_base64_or_urls_and_the_real_size() -> None:
    image = GeneratedImage(data=b"\x89PNG-bytes", format=ImageFormat.PNG, width=64, height=32)
    result = ImageResult(images=[image], backend="local", attempts=[], elapsed_s=0.1)
    body = images_response(result, created=7)
    assert body == {
        "created": 7,
        "data": [{"b64_json": "iVBORy1ieXRlcw=="}],
        "size": "64x32",
        "output_format": "png",
        "adjustments": [],
    }
    assert adjustments_header(result) == {}
    assert images_response(result, urls=["http://x/v1/files/a"], created=7)["data"] == [
        {"url": "http://x/v1/files/a"}
    ]


def test_error_mapping_never_leaks_a_secret_or_a_traceback() -> None:
    redact = Redactor(["sk-secret-1", "abc"])  # too short to redact safely: kept
    failed = AllBackendsFailed(
        "no backend produced an image",
        attempts=[
            Attempt(backend="a", outcome="auth_failed", error="key sk-secret-1 refused", status=401)
        ],
    )
    error = api_error_for(failed, redact)
    assert error.status == 502 and "sk-secret-1" not in json.dumps(error.body())
    assert error.body()["error"]["attempts"][0]["error"] == "key *** refused"
    assert (
        api_error_for(ZeroDivisionError("x"), redact).body()["error"]["message"]
        == "internal server error"
    )
    deadline = api_error_for(AllBackendsFailed("late", attempts=[], deadline_exceeded=True), redact)
    assert (deadline.status, deadline.code) == (504, "deadline_exceeded")
    assert (
        api_error_for(web.HTTPMethodNotAllowed("GET", ["POST"]), redact).headers["Allow"] == "POST"
    )


def test_the_document_states_the_same_bounds_as_image_request() -> None:
    doc = openapi_document(version="0")
    props = doc["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    ours = ImageRequest.model_json_schema()["properties"]
    for name in ("n", "seed", "steps", "guidance_scale"):
        documented = next(s for s in props[name]["anyOf"] if s["type"] != "null")
        expected = next(s for s in ours[name].get("anyOf", [ours[name]]) if s.get("type") != "null")
        assert (documented["minimum"], documented["maximum"]) == (
            expected["minimum"],
            expected["maximum"],
        )
    assert props["prompt"]["maxLength"] == ours["prompt"]["maxLength"]
    assert doc["paths"]["/v1/images/generations"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_adjustments_go_in_the_body_and_in_one_ascii_header() -> None:
    image = GeneratedImage(data=b"\x89PNG-bytes", format=ImageFormat.PNG, width=256, height=256)
    rows = [Adjustment(field="size", asked="128x128", used="256x256", why="allowed: 256..2048"),
            Adjustment(field="sampler", asked="Ëuler", used=None, why="unknown")]
    result = ImageResult(images=[image], backend="flux", attempts=[], elapsed_s=0.1, adjustments=rows)
    assert images_response(result, created=7)["adjustments"] == [
        {"field": "size", "asked": "128x128", "used": "256x256", "why": "allowed: 256..2048"},
        {"field": "sampler", "asked": "Ëuler", "used": None, "why": "unknown"},
    ]
    assert adjustments_header(result) == {
        "x-imagegate-adjustments": "size 128x128->256x256; sampler \\xcbuler->none"
    }


def test_no_size_or_auto_leaves_the_size_to_the_request_default_unset_by_the_caller() -> None:
    for body in ({"prompt": "p"}, {"prompt": "p", "size": "auto"}):
        request = parse(body).request  # type: ignore[attr-defined]
        assert (request.width, request.height) == (1024, 1024)
        assert not {"width", "height"} & request.model_fields_set
    assert {"width", "height"} <= parse({"prompt": "p", "size": "512x512"}).request.model_fields_set  # type: ignore[attr-defined]
