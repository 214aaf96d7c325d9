"""The Space backend against replicas of the real Spaces' interfaces (testing/space_replicas.py),
through the real router: what a user meets first.

The replicas are real Gradio 6 apps built the way the Spaces' app.py builds them (sliders with
their real ranges that refuse out-of-range values, a negative-prompt box with no value, a
WebP ``gr.Image``); gradio_client talks to them for real; the Hub is the aiohttp stand-in.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gradio_client import Client
from imagegate.backends.hf_space import gradio as _gradio
from imagegate.backends.hf_space.discover import interface_from_gradio
from imagegate.backends.hf_space.spaces import INTERFACES, KNOWN_SPACES
from imagegate.errors import AllBackendsFailed, InvalidRequest, Rejected, ServerError
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing import ImageService
from imagegate.store import ImageStore
from imagegate.testing import hub as hub_emulator
from imagegate.testing import serve_app
from imagegate.testing.gradio_space import RunningSpace
from imagegate.testing.space_replicas import REPLICAS
from PIL import Image

from tests.conftest import make_settings

FLUX, SD3 = "black-forest-labs/FLUX.1-schnell", "stabilityai/stable-diffusion-3-medium"


@pytest.fixture
async def hub_url() -> AsyncIterator[str]:
    state = hub_emulator.HubState()
    for space, _ in REPLICAS.values():
        state.set_space(space, "RUNNING", hardware="zero-a10g")
    async with serve_app(hub_emulator.create_app(hub=state)) as url:
        yield url


def service(tmp_path: Path, *tables: dict[str, Any], **service_keys: Any) -> ImageService:
    keys = {"breaker_threshold": 1, "probe_interval_s": 3600, **service_keys}
    return ImageService(make_settings(list(tables), service=keys, tmp_path=tmp_path))


def known(name: str, space: str, replicas: RunningSpace, hub_url: str) -> dict[str, Any]:
    """A built-in Space (its table from KNOWN_SPACES), its Gradio calls going to the replica."""
    replica = next(r for r, (s, _) in REPLICAS.items() if s == space)
    return {"name": name, "kind": "hf_space", "space": space, "src": replicas.replicas[replica],
            "hub_url": hub_url, "read_timeout_s": 20}


# --- the built-in table against the replicas' own description ----------------------------------


@pytest.mark.parametrize("replica", sorted(REPLICAS))
def test_view_api_of_each_replica_matches_the_built_in_table(replicas: RunningSpace, replica: str) -> None:
    """Names, order, required-ness, slider ranges and initial values, api_name and the image
    format: what gradio_client itself reads from the app, compared with spaces.INTERFACES."""
    space = REPLICAS[replica][0]
    client = Client(replicas.replicas[replica], verbose=False, download_files=False)
    try:
        info = client.view_api(print_info=False, return_format="dict")
        found = interface_from_gradio(client.config, info, "/infer", source="replica")
    finally:
        client.close()
    table = INTERFACES[space]
    assert found is not None
    assert (found.api_name, found.params, found.output_format) == (table.api_name, table.params, table.output_format)
    assert KNOWN_SPACES[space]["api_name"] == table.api_name
    names = {p.name for p in table.params}
    assert set(KNOWN_SPACES[space]["inputs"].values()) <= names  # every mapped parameter exists
    assert set(KNOWN_SPACES[space]["fixed"]) <= names
    described = {p["parameter_name"]: p["type"].get("description", "") for p in info["named_endpoints"]["/infer"]["parameters"]}
    assert described["width"] == f"numeric value between {table.params[names_index(table, 'width')].minimum:g} and " \
        f"{table.params[names_index(table, 'width')].maximum:g}"


def names_index(table: Any, name: str) -> int:
    return [p.name for p in table.params].index(name)


# --- the defects the issue names, end to end ------------------------------------------------------


async def test_sd3_request_without_negative_prompt_succeeds_and_says_what_was_sent(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    async with service(tmp_path, known("sd3", SD3, replicas, hub_url)) as svc:
        result = await svc.generate(ImageRequest(prompt="a lighthouse", width=512, height=512, seed=3))
        assert svc.breaker("sd3").state == "closed"
    sent = replicas.calls.last("sd3-medium")
    assert sent["negative_prompt"] == "" and (sent["width"], sent["height"]) == (512, 512)
    assert sent["randomize_seed"] is False and sent["seed"] == 3
    rows = {a.field: (a.asked, a.used) for a in result.adjustments}
    assert rows["negative_prompt"] == (None, "")
    assert rows["output_format"] == ("png", "png")  # the Space answered WebP
    (image,) = result.images
    assert image.format is ImageFormat.PNG and image.info["converted_from"] == "webp"
    assert (image.width, image.height, image.seed) == (512, 512, 3)


async def test_width_128_to_flux_is_adapted_in_nearest_mode_and_the_breaker_stays_closed(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    async with service(tmp_path, known("flux", FLUX, replicas, hub_url)) as svc:
        result = await svc.generate(ImageRequest(prompt="a fox", width=128, height=128, steps=8))
        assert svc.breaker("flux").state == "closed" and svc.breaker("flux").consecutive_failures == 0
    sent = replicas.calls.last("flux-schnell")
    assert (sent["width"], sent["height"], sent["num_inference_steps"]) == (256, 256, 8)
    (size,) = [a for a in result.adjustments if a.field == "size"]
    assert (size.asked, size.used) == ("128x128", "256x256") and "256..2048 in steps of 32" in size.why
    assert (result.images[0].width, result.images[0].height) == (256, 256)


async def test_width_128_to_flux_is_the_callers_error_in_strict_mode_and_nothing_is_sent(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    before = replicas.calls.count("flux-schnell")
    async with service(tmp_path, known("flux", FLUX, replicas, hub_url), adapt="strict") as svc:
        with pytest.raises(InvalidRequest) as caught:
            await svc.generate(ImageRequest(prompt="a fox", width=128, height=128))
        assert svc.breaker("flux").state == "closed"
    assert caught.value.field == "size"
    assert "flux: size 128x128 cannot be served as asked: allowed: width 256..2048 in steps of 32" in str(caught.value)
    assert replicas.calls.count("flux-schnell") == before


async def test_strict_skips_the_space_that_cannot_serve_and_another_serves(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    sd3 = known("sd3", SD3, replicas, hub_url)
    flux = {**known("flux", FLUX, replicas, hub_url), "priority": 1}
    async with service(tmp_path, sd3, flux, adapt="strict") as svc:
        result = await svc.generate(ImageRequest(prompt="wide", width=2048, height=1024))
    assert result.backend == "flux"
    skipped, served = result.attempts
    assert (skipped.backend, skipped.outcome) == ("sd3", "skipped")
    assert skipped.error is not None and skipped.error.startswith("cannot serve it: size 2048x1024")
    assert served.outcome == "ok"


async def test_a_png_asked_from_a_webp_space_is_a_png_file_with_its_parameters(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    request = ImageRequest(prompt="a harbour", width=256, height=256, seed=11)
    async with service(tmp_path, known("flux", FLUX, replicas, hub_url)) as svc:
        result = await svc.generate(request)
    path = ImageStore(tmp_path / "out").save(result.images[0], request, backend=result.backend)
    assert path.suffix == ".png" and path.read_bytes().startswith(b"\x89PNG")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (256, 256)
        assert "Seed: 11" in img.info["parameters"]


# --- without built-in capabilities: classification, then discovery ------------------------------


def custom(replicas: RunningSpace, replica: str, **keys: Any) -> dict[str, Any]:
    """A Space by URL only (no built-in table): nothing is known until its API is read."""
    inputs = {"prompt": "prompt", "width": "width", "height": "height", "seed": "seed"}
    return {"name": "custom", "kind": "hf_space", "src": replicas.replicas[replica], "api_name": "/infer",
            "inputs": inputs, "fixed": {"randomize_seed": False}, "read_timeout_s": 20, **keys}


async def test_gradio_out_of_range_is_the_callers_error_then_discovery_fits_the_next_request(
    replicas: RunningSpace, tmp_path: Path
) -> None:
    async with service(tmp_path, custom(replicas, "flux-schnell")) as svc:
        assert svc.backend("custom").capabilities is None  # nothing known: sent as asked
        with pytest.raises(AllBackendsFailed) as caught:
            await svc.generate(ImageRequest(prompt="a fox", width=128, height=128))
        (attempt,) = caught.value.attempts
        assert attempt.outcome == "rejected" and "Value 128 is less than minimum value 256" in (attempt.error or "")
        assert svc.breaker("custom").state == "closed"  # breaker_threshold = 1: not counted
        caps = svc.backend("custom").capabilities  # learnt when the client was built
        assert caps is not None and caps.source.startswith("discovered: /infer of gradio 6")
        result = await svc.generate(ImageRequest(prompt="a fox", width=128, height=128))
    assert (result.images[0].width, [a.used for a in result.adjustments if a.field == "size"]) == (256, ["256x256"])


async def test_a_required_parameter_left_unmapped_is_rejected_before_sending(
    replicas: RunningSpace, tmp_path: Path
) -> None:
    """gradio_client's own "No value provided for required argument" (a TypeError) is the
    configuration's/caller's problem, not the Space's: rejected, no breaker effect."""
    table = {**custom(replicas, "sd3-medium"), "inputs": {"prompt": "prompt"}, "fixed": {}}
    before = replicas.calls.count("sd3-medium")
    async with service(tmp_path, table) as svc:
        with pytest.raises(AllBackendsFailed) as caught:
            await svc.generate(ImageRequest(prompt="a fox"))
        assert svc.breaker("custom").state == "closed"
    (attempt,) = caught.value.attempts
    assert attempt.outcome == "rejected"
    assert "No value provided for required argument: negative_prompt" in (attempt.error or "")
    assert replicas.calls.count("sd3-medium") == before


async def test_the_probe_discovers_a_space_by_url_and_health_shows_it(
    replicas: RunningSpace, tmp_path: Path
) -> None:
    async with service(tmp_path, custom(replicas, "sd3.5-large")) as svc:
        (health,) = await svc.probe_all()
    caps = health.capabilities
    assert health.ok and caps is not None and caps.source.startswith("discovered")
    assert caps.width is not None and caps.width.describe() == "512..1024 in steps of 32"
    assert caps.formats == ("webp",) and caps.takes == ("size", "seed")
    assert caps.defaults == {"width": 1024, "height": 1024, "seed": 0}


async def test_health_shows_the_built_in_capabilities_of_a_known_space_before_any_probe(
    replicas: RunningSpace, hub_url: str, tmp_path: Path
) -> None:
    async with service(tmp_path, known("sd3", SD3, replicas, hub_url)) as svc:
        (health,) = svc.health()
    caps = health.capabilities
    assert caps is not None and caps.source == "built-in: stable-diffusion-3-medium's app.py"
    assert caps.required == ("negative_prompt",) and caps.guidance_scale is not None
    assert caps.guidance_scale.describe() == "0..10 in steps of 0.1"


# --- the boundary: what gradio and gradio_client raise, translated once --------------------------


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("Value 128 is less than minimum value 256.", Rejected),
        ("Value 4096 is greater than maximum value 2048.", Rejected),
        ("The upstream Gradio app has raised an exception: Value 0 is less than minimum value 1.", Rejected),
        ("Value: 'x' is not in the list of choices: ['a', 'b']", Rejected),
        ("CUDA out of memory", ServerError),
    ],
)
def test_gradio_validation_errors_are_rejected_and_app_errors_server_errors(message: str, kind: type) -> None:
    error = _gradio.app_error(message, backend="s")
    assert type(error) is kind and "The upstream" not in str(error)


@pytest.mark.parametrize(
    "message",
    [
        "No value provided for required argument: negative_prompt",
        "Parameter `guidance_scale` is not a valid key-word argument. Please click on 'view API'",
        "Parameter `prompt` is already set as a positional argument. Please click on 'view API'",
    ],
)
def test_gradio_client_argument_type_errors_are_rejected(message: str) -> None:
    from imagegate.config import Timeouts

    with pytest.raises(Rejected), _gradio.map_gradio_errors("s", Timeouts(connect=1, read=1)):
        raise TypeError(message)


def test_analytics_enabled_is_passed_only_to_a_client_that_takes_it() -> None:
    class Client19:  # gradio_client 1.9.1's constructor (wheel): no analytics_enabled
        def __init__(self, src: str, hf_token: Any = None, max_workers: int = 40, verbose: bool = True,
                     auth: Any = None, httpx_kwargs: Any = None, *, headers: Any = None,
                     download_files: Any = None, ssl_verify: bool = True,
                     _skip_components: bool = True) -> None: ...

    assert _gradio.client_options(Client19) == {}
    assert "analytics_enabled" in inspect.signature(Client).parameters  # the installed 2.x
    assert _gradio.client_options(Client) == {"analytics_enabled": False}
