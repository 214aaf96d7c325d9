"""The pure halves of the router providers: the Hub mapping read and chosen from, each provider's
build/parse, the router's error shapes. No server: these are the functions the backend's I/O
wraps (their wire against huggingface_hub is the differential test's job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.hf_inference import PROVIDERS, error_from_response
from imagegate.backends.hf_inference.hub import MappingEntry, choose, parse_mapping
from imagegate.backends.hf_inference.router import error_message, hub_base
from imagegate.backends.hf_inference.wire import ImageUrl, PollUrl, Target
from imagegate.backends.http import Failed, Pending
from imagegate.errors import (
    BadResponse,
    ContentFiltered,
    GenerationTimeout,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import hf_inference as hf_emulator
from imagegate.testing import serve_app
from imagegate.testing.hf_inference import Served

from tests.conftest import make_settings

M = "owner/model"
LIVE = {"providerId": "p/id", "status": "live", "task": "text-to-image"}


def entries(**by_provider: dict[str, Any]) -> tuple[MappingEntry, ...]:
    parsed = parse_mapping({"inferenceProviderMapping": {k.replace("_", "-"): v for k, v in by_provider.items()}})
    assert parsed is not None
    return parsed


# --- the Hub mapping ---------------------------------------------------------------------------


def test_the_mapping_is_read_from_the_dict_and_the_list_form_alike() -> None:
    as_dict = parse_mapping({"inferenceProviderMapping": {"together": {**LIVE, "adapterWeightsPath": "a.safetensors"}}})
    as_list = parse_mapping({"inferenceProviderMapping": [{"provider": "together", **LIVE,
                                                           "adapterWeightsPath": "a.safetensors"}]})
    assert as_dict == as_list == (MappingEntry("together", "p/id", "live", "text-to-image", "a.safetensors"),)
    assert parse_mapping({"id": M}) is None
    assert parse_mapping({"inferenceProviderMapping": {"x": {"status": "live"}}}) == ()  # no providerId


def test_choose_says_why_a_provider_cannot_serve_the_model() -> None:
    mapping = entries(fal_ai={**LIVE, "status": "staging"}, groq={**LIVE, "task": "conversational"},
                      together=LIVE)
    assert isinstance(choose(mapping, "together", M), MappingEntry)
    assert "only in staging" in str(choose(mapping, "fal-ai", M))
    assert "for conversational, not text-to-image" in str(choose(mapping, "groq", M))
    assert choose(mapping, "nscale", M) == (
        f"model {M!r} is not served by nscale (served by: fal-ai (staging), groq (conversational), together)")
    assert "lists no inference provider" in str(choose(None, "together", M))
    assert choose(None, "hf-inference", M) == MappingEntry("hf-inference", M, "unknown", "text-to-image")


def test_auto_takes_the_first_live_text_to_image_provider_it_speaks() -> None:
    mapping = entries(groq={**LIVE, "task": "conversational"}, hyperbolic=LIVE,
                      fal_ai={**LIVE, "status": "staging"}, replicate=LIVE, together=LIVE)
    chosen = choose(mapping, "auto", M)
    assert isinstance(chosen, MappingEntry) and chosen.provider == "replicate"
    assert "no live text-to-image provider" in str(choose(entries(groq=LIVE | {"task": "x"}), "auto", M))


async def test_auto_end_to_end_skips_a_chat_only_first_entry(tmp_path: Path) -> None:
    mapping = {M: {"groq": Served("chat", task="conversational"), "together": Served("t/id")}}
    async with serve_app(hf_emulator.create_app(api_key="hf_t", mapping=mapping)) as url:
        table = {"name": "hf", "kind": "hf_inference", "base_url": url, "provider": "auto", "model": M}
        settings = make_settings([table], service={"probe_interval_s": 3600}, environ={"HF_TOKEN": "hf_t"},
                                 tmp_path=tmp_path)
        async with ImageService(settings) as service:
            (health,) = await service.probe_all()
            result = await service.generate(ImageRequest(prompt="p", width=256, height=256))
    assert health.detail == f"auto: together serves {M} as t/id (live)"
    info = result.images[0].info
    assert (info["model"], info["provider"], info["provider_model"]) == (M, "together", "t/id")


def test_the_hub_is_huggingface_co_behind_the_public_router_else_base_url() -> None:
    assert hub_base("https://router.huggingface.co") == "https://huggingface.co"
    assert hub_base("https://127.0.0.1:9") == "https://127.0.0.1:9"


# --- build ------------------------------------------------------------------------------------


REQUEST = ImageRequest(prompt="p", negative_prompt="n", width=512, height=768, steps=4, guidance_scale=3.5)


def test_fal_puts_the_size_in_image_size_and_a_lora_in_loras() -> None:
    target = Target("o/lora", "fal-ai/lora", "w.safetensors", "https://hub")
    call = PROVIDERS["fal-ai"].build(REQUEST, target, 1)
    assert call.path == "/fal-ai/fal-ai/lora"
    assert call.body["image_size"] == {"width": 512, "height": 768} and "width" not in call.body
    assert call.body["loras"] == [{"path": "https://hub/o/lora/resolve/main/w.safetensors", "scale": 1}]
    assert call.body["model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"  # fal-ai/lora is SD-based


def test_replicate_goes_to_predictions_with_the_version_of_a_pinned_id() -> None:
    pinned = PROVIDERS["replicate"].build(REQUEST, Target(M, "o/m:abc", None), 1)
    plain = PROVIDERS["replicate"].build(REQUEST, Target(M, "o/m", None), 1)
    assert (pinned.path, pinned.body["version"]) == ("/replicate/v1/predictions", "abc")
    assert plain.path == "/replicate/v1/models/o/m/predictions" and "version" not in plain.body
    assert plain.headers == {"Prefer": "wait"} and plain.body["input"]["num_inference_steps"] == 4


def test_together_renames_steps_and_sets_the_model_last() -> None:
    body = PROVIDERS["together"].build(REQUEST, Target(M, "t/m"), 1).body
    # huggingface_hub's order: steps popped and re-added last, then the model
    assert list(body) == ["prompt", "response_format", "negative_prompt", "height", "width",
                          "guidance_scale", "seed", "steps", "model"]


@pytest.mark.parametrize("name", ["nscale", "zai-org"])
def test_nscale_and_zai_send_only_their_documented_fields(name: str) -> None:
    body = PROVIDERS[name].build(REQUEST, Target(M, "x"), 99).body
    assert set(body) <= {"model", "prompt", "size", "response_format"} and body["size"] == "512x768"


# --- parse --------------------------------------------------------------------------------------


def answer(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_wavespeed_polls_the_result_path_under_the_router_prefix() -> None:
    doc = {"data": {"status": "created", "urls": {"get": "https://api.wavespeed.ai/api/v3/predictions/x/result"}}}
    assert PROVIDERS["wavespeed"].parse(answer(doc), "b") == PollUrl("/wavespeed/api/v3/predictions/x/result")
    done = {"data": {"status": "completed", "outputs": ["https://cdn/x.png"], "has_nsfw_contents": [False]}}
    assert PROVIDERS["wavespeed"].parse(answer(done), "b") == ImageUrl("https://cdn/x.png")
    poll = PROVIDERS["wavespeed"].poll
    assert poll is not None
    assert poll({"data": {"status": "processing"}}, "b") == Pending("processing")
    failed = poll({"data": {"status": "failed", "error": "boom"}}, "b")
    assert isinstance(failed, Failed) and isinstance(failed.error, ServerError)
    with pytest.raises(BadResponse, match="unknown wavespeed task status"):
        poll({"data": {"status": "weird"}}, "b")


def test_zai_answers_a_task_to_poll_or_an_image_at_once() -> None:
    parse = PROVIDERS["zai-org"].parse
    assert parse(answer({"id": "t1", "task_status": "PROCESSING"}), "b") == PollUrl(
        "/zai-org/api/paas/v4/async-result/t1")
    assert parse(answer({"id": "t1", "task_status": "SUCCESS", "image_result": [{"url": "https://c/i.png"}]}),
                 "b") == ImageUrl("https://c/i.png")
    with pytest.raises(ServerError):
        parse(answer({"id": "t1", "task_status": "FAIL"}), "b")
    with pytest.raises(BadResponse, match="task 'id'"):
        parse(answer({"task_status": "PROCESSING"}), "b")


@pytest.mark.parametrize(("provider", "doc", "error"), [
    ("fal-ai", {"images": [{"url": "https://c/i.jpg"}], "has_nsfw_concepts": [True]}, ContentFiltered),
    ("fal-ai", {"images": []}, BadResponse),
    ("fal-ai", {"images": [{"url": "file:///etc/passwd"}]}, BadResponse),
    ("replicate", {"status": "starting", "output": None}, GenerationTimeout),
    ("replicate", {"status": "failed", "error": "NSFW content detected"}, ContentFiltered),
    ("together", {"data": [{"b64_json": "!!not base64!!"}]}, BadResponse),
    ("nscale", {"data": []}, BadResponse),
])
def test_an_answer_without_a_usable_image_is_its_error(provider: str, doc: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        PROVIDERS[provider].parse(answer(doc), "b")


def test_replicate_takes_the_first_output_of_a_list_or_the_one_string() -> None:
    parse = PROVIDERS["replicate"].parse
    assert parse(answer({"status": "succeeded", "output": ["https://c/1", "https://c/2"]}), "b") == ImageUrl("https://c/1")
    assert parse(answer({"status": "succeeded", "output": "https://c/1"}), "b") == ImageUrl("https://c/1")


# --- the router's error shapes ------------------------------------------------------------------


@pytest.mark.parametrize(("body", "text"), [
    ({"error": "plain"}, "plain"),
    ({"error": ["a", "b"]}, "a; b"),
    ({"error": {"message": "nested", "type": "invalid_request_error"}}, "nested"),
    ({"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}, "field required"),
    ({"detail": "replicate says"}, "replicate says"),
    ({"code": 400, "message": "wavespeed says", "data": None}, "wavespeed says"),
])
def test_error_message_reads_every_providers_shape(body: Any, text: str) -> None:
    assert error_message(answer(body), {})[0] == text


def test_a_503_with_estimated_time_is_unavailable_with_retry_after() -> None:
    error = error_from_response(503, answer({"error": "loading", "estimated_time": 12}), {}, backend="b", model=M)
    assert isinstance(error, Unavailable) and error.retry_after == 12.0


def test_a_404_names_the_provider() -> None:
    error = error_from_response(404, b"x", {}, backend="b", model=M, provider=PROVIDERS["together"])
    assert isinstance(error, Rejected) and "not served by together" in str(error)
