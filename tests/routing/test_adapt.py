"""Fitting a request to a backend's capabilities (routing/adapt.py): pure, no I/O."""

from __future__ import annotations

import io

import pytest
from imagegate.backends.images import check_image
from imagegate.backends.openai_images import openai_capabilities
from imagegate.capabilities import REQUEST_FIELDS, Capabilities, Span
from imagegate.errors import InvalidRequest
from imagegate.models import ImageFormat, ImageRequest
from imagegate.routing.adapt import (
    Plan,
    Refusal,
    finish,
    fit_spans,
    match_sampler,
    nearest_size,
    no_backend_error,
    plan,
    split,
)
from imagegate.testing import make_image
from PIL import Image

FLUX = Capabilities(  # FLUX.1-schnell's app.py, as the Space backend builds it
    source="test", takes=("size", "steps", "seed"),
    width=Span(min=256, max=2048, step=32), height=Span(min=256, max=2048, step=32),
    steps=Span(min=1, max=50, step=1), seed=Span(min=0, max=2**31 - 1, step=1), formats=("webp",),
)
SD3 = FLUX.model_copy(update={
    "takes": ("negative_prompt", "size", "steps", "guidance_scale", "seed"),
    "width": Span(min=256, max=1344, step=64), "height": Span(min=256, max=1344, step=64),
    "guidance_scale": Span(min=0, max=10, step=0.1), "required": ("negative_prompt",),
})
A1111 = Capabilities(
    source="test", samplers=("DPM++ 2M", "Euler a", "Euler"), scheduler_suffixes=("Karras", "karras"),
    models=("sd_xl_base_1.0.safetensors [31e35c80fc]",), model_aliases=("sd_xl_base_1.0", "be9edd61"),
)


def req(**fields: object) -> ImageRequest:
    return ImageRequest.model_validate({"prompt": "a fox", **fields})


def fitted(request: ImageRequest, caps: Capabilities, mode: str = "nearest") -> Plan:
    found = plan(request, caps, mode, backend="b")  # type: ignore[arg-type]
    assert isinstance(found, Plan), found
    return found


def refused(request: ImageRequest, caps: Capabilities, mode: str = "strict") -> Refusal:
    found = plan(request, caps, mode, backend="b")  # type: ignore[arg-type]
    assert isinstance(found, Refusal), found
    return found


# --- spans and sizes ---------------------------------------------------------------------------


def test_span_knows_its_grid_and_finds_the_nearest_value() -> None:
    span = Span(min=256, max=2048, step=32)
    assert span.contains(256) and span.contains(1024) and not span.contains(1000)
    assert not span.contains(128) and not span.contains(2080)
    assert (span.nearest(128), span.nearest(1000), span.nearest(4096)) == (256, 992, 2048)
    assert Span(min=0, max=7.5, step=0.1).nearest(9.0) == 7.5
    assert span.describe() == "256..2048 in steps of 32"
    assert Span(min=1, max=30).describe() == "1..30"


@pytest.mark.parametrize(
    ("size", "spans", "expected"),
    [
        ((128, 128), (FLUX.width, FLUX.height), (256, 256)),  # scaled up, ratio kept
        ((1024, 768), (FLUX.width, FLUX.height), (1024, 768)),  # fits: unchanged
        ((2048, 1024), (SD3.width, SD3.height), (1344, 640)),  # scaled down into 1344, step 64
        ((2048, 64), (SD3.width, SD3.height), (1344, 256)),  # 32:1 cannot keep its ratio
        ((1000, 1000), (FLUX.width, FLUX.height), (992, 992)),  # snapped to the step
        ((64, 64), (Span(min=128, max=2048), Span(min=128, max=2048)), (128, 128)),  # Novita
    ],
)
def test_fit_spans_keeps_the_aspect_ratio(
    size: tuple[int, int], spans: tuple[Span, Span], expected: tuple[int, int]
) -> None:
    assert fit_spans(*size, *spans) == expected


def test_nearest_allowed_size_by_aspect_ratio_then_area() -> None:
    dalle3 = ((1024, 1024), (1792, 1024), (1024, 1792))
    gpt = ((1024, 1024), (1536, 1024), (1024, 1536))
    assert nearest_size(1000, 600, dalle3) == (1792, 1024)
    assert nearest_size(512, 512, gpt) == (1024, 1024)
    assert nearest_size(768, 1024, gpt) == (1024, 1536)
    assert nearest_size(256, 256, ((256, 256), (512, 512), (1024, 1024))) == (256, 256)


# --- nearest ---------------------------------------------------------------------------------


def test_nearest_snaps_size_clamps_steps_and_reports_every_change() -> None:
    p = fitted(req(width=128, height=128, steps=150, seed=5), FLUX)
    assert (p.request.width, p.request.height, p.request.steps, p.request.seed) == (256, 256, 50, 5)
    shown = {(a.field, a.asked, a.used) for a in p.adjustments}
    assert shown == {("size", "128x128", "256x256"), ("steps", 150, 50)}
    assert all("allowed: " in a.why for a in p.adjustments)


def test_nearest_clamps_guidance_and_a_seed_past_the_sliders_end() -> None:
    p = fitted(req(guidance_scale=30.0, seed=3_000_000_000), SD3)
    assert (p.request.guidance_scale, p.request.seed) == (10.0, 2**31 - 1)


def test_nearest_drops_fields_the_backend_does_not_take() -> None:
    p = fitted(req(guidance_scale=3.0, negative_prompt="fog", sampler="Euler"), FLUX)
    assert (p.request.guidance_scale, p.request.negative_prompt, p.request.sampler) == (None, "", None)
    assert {a.field: a.used for a in p.adjustments} == {
        "guidance_scale": None, "negative_prompt": None, "sampler": None
    }


def test_a_required_empty_negative_prompt_is_sent_empty_and_said_so_in_both_modes() -> None:
    for mode in ("nearest", "strict"):
        (adjustment,) = fitted(req(), SD3, mode).adjustments
        assert (adjustment.field, adjustment.asked, adjustment.used) == ("negative_prompt", None, "")
    assert fitted(req(negative_prompt="fog"), SD3).adjustments == ()


def test_defaults_the_caller_did_not_set_are_fitted_even_in_strict_mode() -> None:
    small = FLUX.model_copy(update={"width": Span(min=256, max=768), "height": Span(min=256, max=768)})
    p = fitted(req(), small, "strict")  # no width/height given: the 1024 default is fitted
    assert (p.request.width, p.request.height) == (768, 768)
    assert refused(req(width=1024, height=1024), small).field == "size"


def test_unknown_capabilities_send_the_request_as_asked() -> None:
    request = req(width=64, height=64, steps=150, sampler="anything")
    p = plan(request, None, "strict", backend="b")
    assert isinstance(p, Plan) and p.request is request and p.adjustments == ()


# --- strict ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "text"),
    [
        ({"width": 128, "height": 128}, "size", "128x128 cannot be served as asked: allowed: width 256..2048"),
        ({"steps": 150}, "steps", "150 cannot be served as asked: allowed: 1..50"),
        ({"guidance_scale": 3.0}, "guidance_scale", "this backend does not take it"),
        ({"negative_prompt": "fog"}, "negative_prompt", "does not take it"),
        ({"seed": 2**31}, "seed", "allowed: 0..2147483647"),
    ],
)
def test_strict_refuses_what_the_backend_cannot_serve_as_asked(
    fields: dict[str, object], field: str, text: str
) -> None:
    refusal = refused(req(**fields), FLUX)
    assert refusal.field == field and text in refusal.why


def test_strict_still_splits_n_converts_formats_and_fills_required_fields() -> None:
    caps = openai_capabilities("dall-e-3", official=True, extensions=False)
    p = fitted(req(width=1024, height=1024, n=3, output_format="webp"), caps, "strict")
    assert p.chunks == (1, 1, 1) and p.request.output_format is ImageFormat.PNG
    assert p.output_format is ImageFormat.WEBP
    assert [(a.field, a.asked, a.used) for a in p.adjustments] == [("n", 3, 3)]


# --- what cannot be fitted at all --------------------------------------------------------------


def test_a_prompt_too_long_and_an_unknown_model_are_refused_in_both_modes() -> None:
    dalle2 = openai_capabilities("dall-e-2", official=True, extensions=False)
    for mode in ("nearest", "strict"):
        assert refused(req(prompt="x" * 1001), dalle2, mode).field == "prompt"
        assert "not one of this backend's models" in refused(req(model="sd15"), A1111, mode).why
    assert fitted(req(model="sd_xl_base_1.0"), A1111).adjustments == ()  # an alias
    assert fitted(req(model="be9edd61"), A1111).adjustments == ()  # a hash


# --- samplers ---------------------------------------------------------------------------------


def test_match_sampler_exact_with_scheduler_and_case() -> None:
    names, suffixes = A1111.samplers or (), A1111.scheduler_suffixes
    assert match_sampler("Euler a", names, suffixes) == "Euler a"
    assert match_sampler("DPM++ 2M Karras", names, suffixes) == "DPM++ 2M Karras"
    assert match_sampler("DPM++ 2M karras", names, suffixes) == "DPM++ 2M karras"
    assert match_sampler("euler A", names, suffixes) == "Euler a"
    assert match_sampler("dpm++ 2m KARRAS", names, suffixes) == "DPM++ 2M Karras"
    assert match_sampler("No Such", names, suffixes) is None


def test_a_sampler_is_respelt_in_both_modes_and_an_unknown_one_dropped_or_refused() -> None:
    for mode in ("nearest", "strict"):
        p = fitted(req(sampler="euler a"), A1111, mode)
        assert p.request.sampler == "Euler a" and p.adjustments[0].used == "Euler a"
    p = fitted(req(sampler="Nope"), A1111)
    assert p.request.sampler is None and "default is used" in p.adjustments[0].why
    assert "it has: DPM++ 2M, Euler a, Euler" in refused(req(sampler="Nope"), A1111).why


# --- n and formats ------------------------------------------------------------------------------


def test_split_and_the_seeds_of_each_call_continue() -> None:
    assert (split(3, 1), split(8, 3), split(2, None), split(2, 10)) == ((1, 1, 1), (3, 3, 2), (2,), (2,))
    p = fitted(req(n=5, seed=10), Capabilities(source="t", max_n=2))
    assert [(r.n, r.seed) for r in p.calls()] == [(2, 10), (2, 12), (1, 14)]
    assert [r.seed for r in fitted(req(n=2), Capabilities(source="t", max_n=1)).calls()] == [None, None]


def test_a_format_the_backend_cannot_answer_is_asked_as_png_and_converted_after() -> None:
    p = fitted(req(output_format="jpeg"), FLUX)
    assert p.request.output_format is ImageFormat.WEBP  # the one it has (no png)
    p = fitted(req(output_format="jpeg"), Capabilities(source="t", formats=("png", "webp")))
    assert (p.request.output_format, p.output_format) == (ImageFormat.PNG, ImageFormat.JPEG)


async def test_finish_converts_to_the_asked_format_and_notes_a_size_the_provider_changed() -> None:
    webp = check_image(make_image(64, 48, "x", 1, "webp"), backend="b", seed=1)
    p = fitted(req(width=64, height=64), Capabilities(source="t", formats=("webp",)))
    images, adjustments = await finish([webp], p)
    (image,) = images
    assert image.format is ImageFormat.PNG and image.data.startswith(b"\x89PNG")
    assert image.info["converted_from"] == "webp" and image.seed == 1
    assert image.to_pil().size == (64, 48)
    assert Image.open(io.BytesIO(image.data)).getpixel((3, 3)) == webp.to_pil().convert("RGB").getpixel((3, 3))
    assert [(a.field, a.asked, a.used) for a in adjustments] == [
        ("output_format", "png", "png"), ("size", "64x64", "64x48")
    ]


def test_no_backend_error_names_the_field_and_what_each_backend_said() -> None:
    error = no_backend_error([Refusal("flux", "size", "128x128 ...: allowed: width 256..2048"),
                              Refusal("sd3", "steps", "150 ...")])
    assert isinstance(error, InvalidRequest) and error.field == "size"
    assert str(error).startswith("size: no configured backend can serve this request (flux: size 128x128")
    assert "sd3: steps 150" in str(error)


def test_every_request_field_a_backend_may_skip_is_known() -> None:
    assert set(REQUEST_FIELDS) == {"negative_prompt", "size", "steps", "guidance_scale", "seed",
                                   "sampler", "model"}


def test_an_aspect_ratio_backend_takes_sizes_of_its_ratios_and_fits_the_others() -> None:
    caps = Capabilities(source="t", takes=("size",), aspect_ratios=("16:9", "1:1", "9:16"))
    for size in ((1024, 1024), (512, 512), (1344, 768)):  # within 2 % of a ratio
        assert fitted(req(width=size[0], height=size[1]), caps, "strict").adjustments == ()
    (row,) = fitted(req(width=1024, height=832), caps).adjustments
    assert (row.field, row.asked, row.used) == ("size", "1024x832", "1:1")
    assert refused(req(width=1024, height=832), caps).field == "size"
