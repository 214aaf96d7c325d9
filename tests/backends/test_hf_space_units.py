"""The Space backend's pure half (arguments, results, stages, error texts) and its config,
including the zero-key default from ``HF_SPACES``. No network, no Gradio app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from imagegate.backends.hf_space import gradio as _gradio
from imagegate.backends.hf_space.backend import HFSpaceBackend
from imagegate.backends.hf_space.spaces import KNOWN_SPACES, space_host, stage_error
from imagegate.backends.registry import load_settings
from imagegate.errors import ConfigError, QuotaExhausted, Rejected, ServerError, Unavailable
from imagegate.models import ImageRequest
from PIL import Image

from tests.conftest import make_settings

FILEDATA = {
    "path": "/tmp/gradio/abc/image.webp",
    "url": "http://127.0.0.1:7860/gradio_api/file=/tmp/gradio/abc/image.webp",
    "meta": {"_type": "gradio.FileData"},
}


# --- arguments ----------------------------------------------------------------------------------


def test_build_arguments_maps_set_fields_and_adds_fixed_constants() -> None:
    request = ImageRequest(prompt="a fox", width=512, height=768, steps=9)
    inputs = {
        "prompt": "text",
        "width": "w",
        "height": "h",
        "steps": "num_inference_steps",
        "guidance_scale": "cfg",
        "negative_prompt": "neg",
        "seed": "seed",
    }
    arguments = _gradio.build_arguments(request, inputs, {"randomize_seed": False}, seed=17)
    assert arguments == {
        "text": "a fox",
        "w": 512,
        "h": 768,
        "num_inference_steps": 9,
        "seed": 17,
        "randomize_seed": False,
    }


def test_build_arguments_sends_the_configured_model_unless_the_request_names_one() -> None:
    inputs = {"prompt": "prompt", "model": "checkpoint"}
    assert (
        _gradio.build_arguments(ImageRequest(prompt="x"), inputs, {}, seed=None, model="sdxl")[
            "checkpoint"
        ]
        == "sdxl"
    )
    request = ImageRequest(prompt="x", model="flux")
    assert (
        _gradio.build_arguments(request, inputs, {}, seed=None, model="sdxl")["checkpoint"]
        == "flux"
    )


def test_check_arguments_names_the_unknown_parameter_and_the_known_ones() -> None:
    parameters = [{"parameter_name": "prompt"}, {"parameter_name": "seed"}]
    _gradio.check_arguments({"prompt": "x"}, parameters, api_name="/infer", backend="b")
    with pytest.raises(Rejected, match="no parameter 'steps'.*prompt, seed"):
        _gradio.check_arguments(
            {"prompt": "x", "steps": 4}, parameters, api_name="/infer", backend="b"
        )


def test_pick_api_name_takes_the_first_endpoint_returning_an_image() -> None:
    info = {
        "named_endpoints": {
            "/caption": {"returns": [{"component": "Textbox"}]},
            "/infer": {"returns": [{"component": "Image"}, {"component": "Number"}]},
            "/gallery": {"returns": [{"component": "Gallery"}]},
        }
    }
    assert _gradio.pick_api_name(info) == "/infer"
    assert _gradio.pick_api_name({"named_endpoints": {"/x": {"returns": []}}}) is None


# --- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "kind", "seed"),
    [
        (FILEDATA, "file", None),
        ((FILEDATA, 42), "file", 42),
        (("a caption", FILEDATA, 7.0), "file", 7),
        ([{"image": FILEDATA, "caption": None}], "file", None),
        ([[FILEDATA, "caption"]], "file", None),
        ("/tmp/out/image.png", "path", None),
        ("https://example.org/x.png", "url", None),
        (b"\x89PNG...", "bytes", None),
        ((True, FILEDATA), "file", None),  # a bool is no seed
    ],
)
def test_find_image_accepts_every_result_shape(result: Any, kind: str, seed: int | None) -> None:
    ref, found_seed = _gradio.find_image(result)
    assert ref is not None and ref.kind == kind and found_seed == seed


def test_find_image_accepts_a_pil_image_and_refuses_text() -> None:
    ref, _ = _gradio.find_image(Image.new("RGB", (8, 8)))
    assert ref is not None and ref.kind == "pil"
    assert _gradio.find_image("just a caption") == (None, None)
    assert _gradio.find_image(("text", 3)) == (None, 3)


def test_file_url_is_built_from_the_path_under_the_clients_root() -> None:
    root = "https://owner-app.hf.space/gradio_api/"
    assert (
        _gradio.file_url(FILEDATA, root)
        == "https://owner-app.hf.space/gradio_api/file=/tmp/gradio/abc/image.webp"
    )
    assert _gradio.file_url({"path": "/a b.png"}, root).endswith("file=/a%20b.png")
    assert (
        _gradio.file_url({"url": "https://cdn.example/x.png"}, root) == "https://cdn.example/x.png"
    )
    assert _gradio.same_origin("https://owner-app.hf.space/x", root)
    assert not _gradio.same_origin("https://cdn.example/x.png", root)


# --- stages and app errors ----------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"])
def test_running_stages_can_serve(stage: str) -> None:
    assert stage_error({"stage": stage}, space="o/a", backend="b") is None


@pytest.mark.parametrize(
    ("stage", "retry_after"),
    [
        ("SLEEPING", 120.0),
        ("STOPPED", 120.0),
        ("BUILDING", 30.0),
        ("APP_STARTING", 30.0),
        ("RUNTIME_ERROR", 1800.0),
        ("NO_APP_FILE", 1800.0),
        ("PAUSED", 1800.0),
        ("DELETING", 1800.0),
        ("SOMETHING_NEW", 60.0),
    ],
)
def test_other_stages_are_unavailable_with_a_cool_down(stage: str, retry_after: float) -> None:
    error = stage_error(
        {"stage": stage, "errorMessage": "Exit code 1"}, space="o/a", backend="b"
    )
    assert isinstance(error, Unavailable) and error.retry_after == retry_after


@pytest.mark.parametrize(
    ("message", "cls", "retry_after"),
    [
        (
            "You have exceeded your GPU quota (60s requested vs. 45s left). Try again in 1:02:03",
            QuotaExhausted,
            3723.0,
        ),
        (
            "You have exceeded your Pro GPU quota (120s requested vs. 0s left).",
            QuotaExhausted,
            None,
        ),
        ("No GPU was available after 60s. Retry later", Unavailable, 60.0),
        ("CUDA out of memory", ServerError, None),
        (None, ServerError, None),
    ],
)
def test_app_error_texts_map_to_kinds(
    message: str | None, cls: type, retry_after: float | None
) -> None:
    error = _gradio.app_error(message, backend="b")
    assert type(error) is cls and error.retry_after == retry_after


def test_a_cut_result_stream_is_a_timeout_only_after_the_read_budget() -> None:
    assert _gradio.stream_cut_error(5.0, 5.0, backend="b").kind == "generation_timeout"
    assert _gradio.stream_cut_error(1.0, 5.0, backend="b").kind == "connect_failed"


# --- config, the built-in table, HF_SPACES ------------------------------------------------------


def test_space_host_maps_dots_and_underscores_like_the_hub() -> None:
    assert (
        space_host("black-forest-labs/FLUX.1-schnell")
        == "https://black-forest-labs-flux-1-schnell.hf.space"
    )
    assert space_host("Some_User/my_app.v2") == "https://some-user-my-app-v2.hf.space"


def test_hf_spaces_configures_space_backends_from_the_built_in_table() -> None:
    settings = load_settings(
        None, environ={"HF_SPACES": "black-forest-labs/FLUX.1-schnell, owner/other"}, dotenv=False
    )
    flux, other = settings.backends
    assert (flux.name, flux.kind, flux.space) == (
        "flux.1-schnell",
        "hf_space",
        "black-forest-labs/FLUX.1-schnell",
    )
    assert flux.api_name == "/infer" and flux.inputs["steps"] == "num_inference_steps"
    assert flux.fixed == {"randomize_seed": False}
    assert (other.name, other.api_name, other.inputs) == ("other", None, {"prompt": "prompt"})


def test_no_config_and_no_keys_gives_every_known_space() -> None:
    settings = load_settings(None, environ={}, dotenv=False)
    assert [b.space for b in settings.backends] == list(KNOWN_SPACES)
    assert len(KNOWN_SPACES) >= 2


def test_same_space_name_under_two_owners_gets_two_backends() -> None:
    settings = load_settings(None, environ={"HF_SPACES": "a/app,b/app"}, dotenv=False)
    assert [b.name for b in settings.backends] == ["app", "b-app"]


async def test_known_space_in_a_toml_table_takes_the_built_in_mapping(tmp_path: Path) -> None:
    settings = make_settings(
        [{"name": "flux", "kind": "hf_space", "space": "black-forest-labs/FLUX.1-schnell"}],
        tmp_path=tmp_path,
    )
    async with aiohttp.ClientSession() as http:
        backend = HFSpaceBackend(settings.backends[0], secrets={}, session=http)
        try:
            assert backend.src == "https://black-forest-labs-flux-1-schnell.hf.space"
            assert backend._api_name == "/infer" and backend._inputs["seed"] == "seed"
        finally:
            await backend.aclose()


def test_space_and_src_together_are_accepted_and_neither_is_an_error(tmp_path: Path) -> None:
    both = make_settings(
        [{"name": "s", "kind": "hf_space", "space": "o/a", "src": "http://127.0.0.1:1"}],
        tmp_path=tmp_path,
    )
    assert both.backends[0].space == "o/a"
    with pytest.raises(ConfigError, match="set 'space'"):
        make_settings([{"name": "s", "kind": "hf_space"}], tmp_path=tmp_path)


@pytest.mark.parametrize(
    ("table", "text"),
    [
        ({"inputs": {"prompt": "p", "colour": "c"}}, "unknown request field 'colour'"),
        ({"inputs": {"steps": "n"}}, "must map 'prompt'"),
        (
            {"inputs": {"prompt": "p", "seed": "seed"}, "fixed": {"seed": 1}},
            "both 'inputs' and 'fixed'",
        ),
    ],
)
def test_bad_mappings_are_config_errors_naming_the_problem(
    tmp_path: Path, table: dict[str, Any], text: str
) -> None:
    with pytest.raises(ConfigError, match=text):
        make_settings(
            [{"name": "s", "kind": "hf_space", "space": "o/a", **table}], tmp_path=tmp_path
        )
