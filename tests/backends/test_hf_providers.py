"""Each router provider of the ``hf_inference`` backend against the router stand-in, over real
HTTPS on loopback: how its answer is decoded (bytes, base64, a URL fetched under the download
policy, a job polled), how its errors map to the taxonomy, what goes where (the token, the
billed organisation). Poll intervals and timeouts are fractions of a second, set through the
config keys users set.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.hf_inference import HFInferenceBackend
from imagegate.backends.hf_inference import backend as hf_backend
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ContentFiltered,
    GenerationTimeout,
    QuotaExhausted,
    Rejected,
    ServerError,
)
from imagegate.models import ImageFormat
from imagegate.testing import Knobs, LocalCA, serve_app
from imagegate.testing import hf_inference as hf_emulator

from tests.backends.support import BackendCase, fails

TOKEN = "hf_providersSECRETtoken9876"
SCHNELL = "black-forest-labs/FLUX.1-schnell"


def case(provider: str, model: str = SCHNELL, **table: Any) -> BackendCase[HFInferenceBackend]:
    return BackendCase(
        name="hf", kind="hf_inference", cls=HFInferenceBackend, create_app=hf_emulator.create_app,
        env_var="HF_TOKEN", secret=TOKEN, request={"prompt": "a red fox", "width": 1024, "height": 1024},
        table={"provider": provider, "model": model, "poll_interval_s": 0.01, **table},
    )


FAL, TOGETHER, NSCALE = case("fal-ai"), case("together"), case("nscale")
REPLICATE, WAVESPEED, ZAI = case("replicate"), case("wavespeed"), case("zai-org", "zai-org/GLM-Image")


@pytest.fixture
async def url(knobs: Knobs, local_ca: LocalCA) -> AsyncIterator[str]:
    async with FAL.serve(knobs, local_ca) as served:
        yield served


def paths(knobs: Knobs, method: str = "POST") -> list[str]:
    return [r.path for r in knobs.requests if r.method == method]


# --- answers: base64, URLs, jobs ---------------------------------------------------------------


@pytest.mark.parametrize(("this", "fmt"), [(TOGETHER, ImageFormat.JPEG), (NSCALE, ImageFormat.PNG)])
async def test_base64_answers_are_decoded(
    url: str, tmp_path: Path, local_ca: LocalCA, this: BackendCase[HFInferenceBackend], fmt: ImageFormat
) -> None:
    async with this.backend(url, tmp_path, local_ca) as backend:
        (image,) = await this.generate(backend, width=768, height=512, seed=5)
    assert (image.format, image.width, image.height) == (fmt, 768, 512)
    assert image.seed == (5 if this is TOGETHER else None)  # nscale takes no seed


@pytest.mark.parametrize("this", [FAL, REPLICATE])
async def test_url_answers_are_downloaded_without_the_token(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, this: BackendCase[HFInferenceBackend]
) -> None:
    async with this.backend(url, tmp_path, local_ca) as backend:
        (image,) = await this.generate(backend, width=640, height=512, seed=9)
    assert (image.width, image.height, image.seed) == (640, 512, 9)
    (download,) = [r for r in knobs.requests if r.path.startswith("/files/")]
    assert "Authorization" not in download.headers  # as huggingface_hub: a plain GET


@pytest.mark.parametrize("this", [WAVESPEED, ZAI])
async def test_jobs_are_polled_with_the_post_headers_until_they_end(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, this: BackendCase[HFInferenceBackend]
) -> None:
    knobs.arm("job_pending", polls=3)
    async with this.backend(url, tmp_path, local_ca, bill_to="acme-org") as backend:
        (image,) = await this.generate(backend, width=1024, height=1088)
    assert (image.width, image.height) == (1024, 1088)
    polls = [r for r in knobs.requests if r.method == "GET" and not r.path.startswith(("/files/", "/api/"))]
    assert len(polls) == 4
    assert polls[0].path.startswith(f"/{this.table['provider']}/")  # the router's prefix
    for poll in polls:
        assert poll.headers["Authorization"] == f"Bearer {TOKEN}" and poll.headers["X-HF-Bill-To"] == "acme-org"
    hub, files = (next(r for r in knobs.requests if r.path.startswith(p)) for p in ("/api/", "/files/"))
    assert "X-HF-Bill-To" not in hub.headers and "X-HF-Bill-To" not in files.headers


async def test_a_job_still_running_at_the_deadline_is_generation_timeout(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("job_pending", polls=10_000)
    opened = WAVESPEED.backend(url, tmp_path, local_ca, poll_interval_s=0.05)
    error = await fails(opened, lambda b: WAVESPEED.generate(b, deadline_s=0.5), GenerationTimeout,
                        within_s=0.5 + 1.0)
    assert "still processing" in str(error)


@pytest.mark.parametrize(("this", "arm", "expected", "match"), [
    (WAVESPEED, "job_failed", ServerError, "wavespeed task failed"),
    (ZAI, "job_failed", ServerError, "zai-org task .* failed"),
    (REPLICATE, "job_failed", ServerError, "CUDA out of memory"),
    (REPLICATE, "no_output", GenerationTimeout, "still processing when the wait ended"),
    (REPLICATE, "nsfw", ContentFiltered, "NSFW"),
    (FAL, "nsfw", ContentFiltered, "safety checker"),
    (WAVESPEED, "nsfw", ContentFiltered, "NSFW"),
])
async def test_a_provider_saying_the_job_failed_is_its_error_kind(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA,
    this: BackendCase[HFInferenceBackend], arm: str, expected: type[BackendError], match: str,
) -> None:
    knobs.arm(arm)
    await fails(this.backend(url, tmp_path, local_ca), this.generate, expected, match=match)


# --- the download policy -----------------------------------------------------------------------


async def test_an_image_url_on_another_private_host_is_refused_unless_in_download_hosts(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    async with serve_app(hf_emulator.create_app(api_key=TOKEN)) as cdn:
        elsewhere = f"{cdn}/files/64x64-1-abcdef123456.png"
        knobs.arm("image_url", url=elsewhere)
        await fails(FAL.backend(url, tmp_path, local_ca), FAL.generate, BadResponse,
                    match="not a public address")
        knobs.arm("image_url", url=elsewhere)
        host = cdn.removeprefix("http://")
        async with FAL.backend(url, tmp_path, local_ca, download_hosts=[host]) as backend:
            (image,) = await FAL.generate(backend)
    assert (image.width, image.height) == (64, 64)


async def test_an_image_url_answering_no_image_is_bad_response_without_quoting_it(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    knobs.arm("not_image", path="/files/*")
    error = await fails(FAL.backend(url, tmp_path, local_ca), FAL.generate, BadResponse)
    assert "html" not in str(error).lower()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("this", [FAL, TOGETHER, NSCALE, REPLICATE, WAVESPEED, ZAI])
async def test_a_model_the_provider_does_not_serve_is_rejected_naming_both(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, this: BackendCase[HFInferenceBackend]
) -> None:
    opened = this.backend(url, tmp_path, local_ca, model="emulator/staging-only")
    await fails(opened, this.generate, Rejected, match="emulator/staging-only")
    assert paths(knobs) == []  # the mapping said so: nothing was sent to the provider


@pytest.mark.parametrize(("this", "status", "headers", "body", "expected", "match"), [
    (FAL, 422, {}, {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}, Rejected, "field required"),
    (TOGETHER, 400, {}, {"error": {"message": "invalid size", "type": "invalid_request_error"}}, Rejected,
     "invalid size"),
    (REPLICATE, 422, {}, {"title": "Input validation failed", "detail": "- input.width: too big"}, Rejected,
     "too big"),
    (WAVESPEED, 400, {}, {"code": 400, "message": "prompt is required", "data": None}, Rejected, "prompt is"),
    (ZAI, 400, {}, {"error": {"code": "1214", "message": "size invalid"}}, Rejected, "size invalid"),
    (NSCALE, 429, {}, {"error": {"message": "Insufficient credit"}}, QuotaExhausted, "credit"),
    (TOGETHER, 402, {"X-Error-Code": "NOT_ENOUGH_BALANCE"}, {"error": "no credits"}, QuotaExhausted, "credit"),
    (FAL, 404, {}, {"error": "Model not supported by provider fal-ai"}, Rejected, "not served by fal-ai"),
    (ZAI, 401, {}, {"error": "Invalid credentials in Authorization header"}, AuthFailed, "Invalid credentials"),
    (REPLICATE, 500, {}, {"detail": "internal"}, ServerError, "internal"),
])
async def test_each_providers_error_shape_maps_to_the_taxonomy_with_its_message(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, this: BackendCase[HFInferenceBackend],
    status: int, headers: dict[str, str], body: Any, expected: type[BackendError], match: str,
) -> None:
    knobs.arm("status", status=status, headers=headers, body=body)
    error = await fails(this.backend(url, tmp_path, local_ca), this.generate, expected, match=match)
    assert (type(error), error.status) == (expected, status)


async def test_the_stand_ins_own_validation_is_what_the_backend_reads(
    url: str, tmp_path: Path, local_ca: LocalCA
) -> None:
    # GLM-Image takes 1024-2048 px: the backend's capabilities say so, generate() unadapted sends it
    await fails(ZAI.backend(url, tmp_path, local_ca), lambda b: ZAI.generate(b, width=512, height=512),
                Rejected, match="divisible by 32")


# --- the event loop is never blocked -------------------------------------------------------------


def test_the_backend_never_imports_huggingface_hub() -> None:
    """Its payloads are our own pure functions (checked against huggingface_hub by the
    differential test), so none of its sync HTTP or sleeps can run on the event loop."""
    code = ("import sys, imagegate.backends.registry, imagegate.backends.hf_inference.backend; "
            "print('huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the mapping cache ---------------------------------------------------------------------------


async def test_another_models_mapping_is_looked_up_once_and_kept_when_a_refresh_fails(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev = "black-forest-labs/FLUX.1-dev"
    lookup = f"/api/models/{dev}"
    async with TOGETHER.backend(url, tmp_path, local_ca) as backend:
        await TOGETHER.generate(backend, model=dev)
        await TOGETHER.generate(backend, model=dev)
        assert paths(knobs, "GET").count(lookup) == 1
        monkeypatch.setattr(hf_backend, "MAPPING_TTL_S", 0.0)  # every use is now a refresh
        knobs.arm("status", status=503, path=lookup)
        (image,) = await TOGETHER.generate(backend, model=dev)  # the Hub is down: the last answer serves
        assert paths(knobs, "GET").count(lookup) == 2
    assert image.info["model"] == dev and paths(knobs).count("/together/v1/images/generations") == 3


async def test_hf_inference_never_waits_for_the_hub_to_generate(
    url: str, knobs: Knobs, tmp_path: Path, local_ca: LocalCA
) -> None:
    this = case("hf-inference")
    async with this.backend(url, tmp_path, local_ca) as backend:
        await this.generate(backend)
    assert [r.path for r in knobs.requests] == [f"/hf-inference/models/{SCHNELL}"]
