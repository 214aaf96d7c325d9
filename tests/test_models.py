"""ImageRequest validation (nothing is sent for a bad request), and what is JSON-serialisable."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagegate.errors import InvalidRequest
from imagegate.models import (
    MAX_SEED,
    Attempt,
    BackendHealth,
    GeneratedImage,
    ImageFormat,
    ImageRequest,
    ImageResult,
)
from imagegate.testing import make_image
from pydantic import ValidationError

FIELDS = list(ImageRequest.model_fields)

any_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50)
    | st.binary(max_size=20)
    | st.sampled_from(["png", "jpeg", "webp", "gif", "", " ", "1024", "7.5", "nan", "\x00"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
keys = st.sampled_from(FIELDS) | st.text(max_size=20)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, any_value, max_size=len(FIELDS) + 2))
def test_parse_of_any_dict_returns_a_request_or_raises_invalid_request(data: dict[str, Any]) -> None:
    try:
        request = ImageRequest.parse(data)
    except InvalidRequest as exc:
        assert str(exc), "an InvalidRequest must say what is wrong"
        assert exc.field is None or exc.field.split(".")[0] in data or exc.field == "prompt"
        return
    assert isinstance(request, ImageRequest)
    assert request.prompt.strip()
    assert 64 <= request.width <= 2048 and request.width % 8 == 0


@settings(max_examples=200, deadline=None)
@given(
    st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=40).filter(str.strip)},
        optional={
            "width": st.integers(8, 256).map(lambda i: i * 8),
            "height": st.integers(8, 256).map(lambda i: i * 8),
            "seed": st.integers(0, MAX_SEED),
            "n": st.integers(1, 8),
            "steps": st.integers(1, 150),
            "guidance_scale": st.floats(0, 30),
            "output_format": st.sampled_from(["png", "jpeg", "webp"]),
        },
    )
)
def test_valid_requests_round_trip_through_json(data: dict[str, Any]) -> None:
    request = ImageRequest.parse(data)
    again = ImageRequest.parse(json.loads(request.model_dump_json()))
    assert again == request


@pytest.mark.parametrize("data", [None, [], "a prompt", 42, ["prompt", "x"]])
def test_a_request_that_is_not_an_object_is_invalid(data: Any) -> None:
    with pytest.raises(InvalidRequest, match="JSON object"):
        ImageRequest.parse(data)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("width", 4096, "64..2048"),
        ("width", 32, "64..2048"),
        ("height", 4096, "64..2048"),
        ("steps", 0, "1..150"),
        ("steps", 151, "1..150"),
        ("guidance_scale", 31, "0..30"),
        ("guidance_scale", -1, "0..30"),
        ("seed", -1, f"0..{MAX_SEED}"),
        ("seed", 2**32, f"0..{MAX_SEED}"),
        ("n", 9, "1..8"),
        ("n", 0, "1..8"),
    ],
)
def test_out_of_range_message_names_field_range_and_value(field: str, value: Any, expected: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ImageRequest.parse({"prompt": "a cat", field: value})
    message = str(caught.value)
    assert caught.value.field == field
    assert message.startswith(f"{field}:")
    assert expected in message and f"got {value}" in message


def test_width_not_a_multiple_of_8_says_so() -> None:
    with pytest.raises(InvalidRequest, match="width: must be a multiple of 8 \\(got 513\\)"):
        ImageRequest.parse({"prompt": "a cat", "width": 513})


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_blank_prompt_is_invalid(prompt: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ImageRequest.parse({"prompt": prompt})
    assert caught.value.field == "prompt"
    assert str(caught.value).startswith("prompt:")


def test_missing_prompt_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="prompt: field required"):
        ImageRequest.parse({"width": 512})


def test_overlong_prompt_names_the_length_limit() -> None:
    with pytest.raises(InvalidRequest, match=r"prompt: length must be 1\.\.4000 characters \(got 4001\)"):
        ImageRequest.parse({"prompt": "x" * 4001})


def test_unknown_field_is_invalid_and_named() -> None:
    with pytest.raises(InvalidRequest, match="colour: unknown field") as caught:
        ImageRequest.parse({"prompt": "a cat", "colour": "red"})
    assert caught.value.field == "colour"


def test_unknown_output_format_is_invalid() -> None:
    with pytest.raises(InvalidRequest, match="output_format"):
        ImageRequest.parse({"prompt": "a cat", "output_format": "gif"})


def test_every_problem_is_listed_in_one_line() -> None:
    with pytest.raises(InvalidRequest) as caught:
        ImageRequest.parse({"prompt": "a cat", "width": 4096, "steps": 0})
    message = str(caught.value)
    assert "width:" in message and "steps:" in message and "\n" not in message


def test_defaults_are_those_of_the_issue() -> None:
    request = ImageRequest(prompt="a cat")
    assert (request.width, request.height, request.n, request.seed) == (1024, 1024, 1, None)
    assert request.output_format is ImageFormat.PNG
    with pytest.raises(ValidationError, match="frozen"):
        request.width = 512  # type: ignore[misc]


def test_generated_image_decodes_and_its_json_leaves_out_the_bytes() -> None:
    data = make_image(64, 32, "x", 1)
    image = GeneratedImage(data=data, format=ImageFormat.PNG, width=64, height=32, seed=1)
    assert image.to_pil().size == (64, 32)
    dumped = json.loads(image.model_dump_json())
    assert "data" not in dumped and dumped["seed"] == 1 and dumped["format"] == "png"


def test_result_attempts_and_health_are_json_serialisable() -> None:
    image = GeneratedImage(data=make_image(64, 64), format=ImageFormat.PNG, width=64, height=64)
    result = ImageResult(
        images=[image],
        backend="local",
        attempts=[
            Attempt(backend="down", outcome="connect_failed", elapsed_s=0.01, error="refused"),
            Attempt(backend="local", outcome="ok", elapsed_s=0.2),
        ],
        elapsed_s=0.21,
    )
    doc = json.loads(result.model_dump_json())
    assert [a["outcome"] for a in doc["attempts"]] == ["connect_failed", "ok"]
    assert doc["images"][0]["width"] == 64 and "data" not in doc["images"][0]
    health = BackendHealth(name="local", kind="a1111", ok=True, timings={"total_s": 0.01})
    assert json.loads(health.model_dump_json())["state"] == "closed"
    assert not math.isnan(doc["elapsed_s"])


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("seed", True, "0..4294967295"), ("width", "512", "64..2048"), ("n", 2.0, "1..8"), ("guidance_scale", False, "0..30")],
)
def test_numbers_are_strict_and_the_message_names_the_range(field: str, value: object, allowed: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ImageRequest.parse({"prompt": "a cat", field: value})
    assert info.value.field == field
    assert allowed in str(info.value)
