"""Differential tests: for every text-to-image provider huggingface_hub supports, the request
imagegate sends and the request ``huggingface_hub.InferenceClient(provider=...).text_to_image``
sends for the same inputs, both captured by the router stand-in, compared field by field
(method, path, query, every header but the transport's own, every JSON field).

The differences imagegate makes on purpose are listed below with why; any other difference,
missing or extra, fails. The real client runs in a subprocess (tests/testing/hf_client.py:
where it sends things is fixed at import time, and this process sets ``HF_HUB_OFFLINE``);
nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.hf_inference import PROVIDER_NAMES, PROVIDERS
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, serve_app
from imagegate.testing import hf_inference as hf_emulator
from imagegate.testing.knobs import RecordedRequest

from tests.conftest import make_settings

TOKEN = "hf_differential_0123456789"
CLIENT = Path(__file__).with_name("hf_client.py")
SCHNELL = "black-forest-labs/FLUX.1-schnell"
MODELS = {p: SCHNELL for p in PROVIDER_NAMES} | {"zai-org": "zai-org/GLM-Image"}
FULL = {"negative_prompt": "blurry", "width": 1024, "height": 1280, "num_inference_steps": 4,
        "guidance_scale": 3.5, "seed": 42}
MINIMAL = {"width": 1024, "height": 1024}
# what each side's HTTP library adds on its own: not part of the provider's wire format
TRANSPORT_HEADERS = {"user-agent", "x-amzn-trace-id", "accept-encoding", "content-length", "host",
                     "connection"}
# where each provider's body carries the seed
SEED_AT = {"hf-inference": "body.parameters.seed", "replicate": "body.input.seed"}
ALWAYS_SEEDED = ("imagegate always sends a seed to a provider that takes one (drawn when none "
                 "is given): every image reports the seed that made it (backend.py)")
NSCALE_DOC = ("only the fields Nscale's API reference documents are sent (model, prompt, size, n: "
              "docs.nscale.com create-image), so no seed is reported that the provider may ignore")
ZAI_DOC = ("only the fields Z.ai's API reference documents are sent (model, prompt, quality, size, "
           "user_id: docs.z.ai generate-image-async), so no seed is reported that it may ignore")


@dataclass(frozen=True)
class Case:
    provider: str
    model: str
    params: dict[str, Any]
    bill_to: str | None = None
    # path -> (the side that has it: "ours" or "theirs", why)
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)

    def client_case(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "params": self.params, "bill_to": self.bill_to}

    def request(self) -> ImageRequest:
        p = self.params
        return ImageRequest(prompt="a red fox", model=self.model, width=p["width"], height=p["height"],
                            negative_prompt=p.get("negative_prompt", ""), steps=p.get("num_inference_steps"),
                            guidance_scale=p.get("guidance_scale"), seed=p.get("seed"))


def _full(provider: str) -> Case:
    expected = {}
    if provider == "nscale":
        expected = {f"body.{k}": ("theirs", NSCALE_DOC) for k in ("negative_prompt", "guidance_scale", "seed")}
    if provider == "zai-org":
        expected = {f"body.{k}": ("theirs", ZAI_DOC)
                    for k in ("negative_prompt", "num_inference_steps", "guidance_scale", "seed")}
    return Case(provider, MODELS[provider], FULL, "acme-org", expected)


def _minimal(provider: str) -> Case:
    seeded = "seed" in PROVIDERS[provider].takes
    expected = {SEED_AT.get(provider, "body.seed"): ("ours", ALWAYS_SEEDED)} if seeded else {}
    return Case(provider, MODELS[provider], MINIMAL, None, expected)


CASES = [
    *(_full(p) for p in PROVIDER_NAMES),
    *(_minimal(p) for p in PROVIDER_NAMES),
    # a LoRA (the mapping's adapterWeightsPath): fal's "loras", Replicate's "lora_weights"
    Case("fal-ai", "emulator/flux-lora", FULL),
    Case("replicate", "emulator/flux-lora", FULL),  # also version-pinned: /v1/predictions + version
    Case("replicate", "stabilityai/stable-diffusion-xl-base-1.0", FULL),
    # "auto": both take the mapping's first entry here (fal-ai; imagegate would skip a first
    # entry that is no live text-to-image provider, huggingface_hub would fail on it)
    Case("auto", SCHNELL, FULL),
]


def flatten(doc: Any, prefix: str) -> dict[str, Any]:
    """``{"body.input.seed": 42, ...}``: every leaf of a JSON document by its path."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for key, value in doc.items():
            out.update(flatten(value, f"{prefix}.{key}"))
        return out or {prefix: {}}
    if isinstance(doc, list):
        out = {}
        for i, value in enumerate(doc):
            out.update(flatten(value, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: doc}


def wire(request: RecordedRequest) -> dict[str, Any]:
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in TRANSPORT_HEADERS}
    return {"method": request.method, "path": request.path, "query": request.query,
            **flatten(headers, "header"), **flatten(request.body, "body")}


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, str]:
    """Each differing field: "ours" (only we send it), "theirs" (only they do), or "value"."""
    out = {}
    for key in ours.keys() | theirs.keys():
        if key not in theirs:
            out[key] = "ours"
        elif key not in ours:
            out[key] = "theirs"
        elif ours[key] != theirs[key]:
            out[key] = f"value: ours {ours[key]!r}, theirs {theirs[key]!r}"
    return out


async def run_client(url: str, cases: list[Case], tmp_path: Path) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(CLIENT), url, TOKEN, json.dumps([c.client_case() for c in cases]),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


def posts(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if r.method == "POST"]


async def run_imagegate(url: str, cases: list[Case], tmp_path: Path) -> list[Any]:
    tables = [{"name": f"case{i}", "kind": "hf_inference", "base_url": url, "provider": c.provider,
               "model": c.model, "poll_interval_s": 0.01, **({"bill_to": c.bill_to} if c.bill_to else {})}
              for i, c in enumerate(cases)]
    settings = make_settings(tables, service={"probe_interval_s": 3600}, environ={"HF_TOKEN": TOKEN},
                             tmp_path=tmp_path)
    results = []
    async with ImageService(settings) as service:
        for i, case in enumerate(cases):
            results.append(await service.generate(case.request(), backend=f"case{i}"))
    return results


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Case, Any, Any, dict[str, Any], Any]]:
    """Every case sent by both clients: (case, ours, theirs, the client's result, our result)."""
    tmp = tmp_path_factory.mktemp("differential")

    async def both() -> list[tuple[Case, Any, Any, dict[str, Any], Any]]:
        knobs = Knobs()  # one stand-in for both: the same URLs (a LoRA's path names it)
        async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN)) as url:
            client_results = await run_client(url, CASES, tmp)
            split = len(knobs.requests)
            our_results = await run_imagegate(url, CASES, tmp)
        theirs, ours = posts(knobs.requests[:split]), posts(knobs.requests[split:])
        assert len(client_results) == len(CASES), client_results
        assert len(theirs) == len(ours) == len(CASES), ([r.path for r in theirs], [r.path for r in ours])
        return list(zip(CASES, ours, theirs, client_results, our_results, strict=True))

    return asyncio.run(both())


def test_the_providers_are_exactly_those_huggingface_hub_supports_for_text_to_image() -> None:
    from huggingface_hub.inference._providers import PROVIDERS as HUB_PROVIDERS

    theirs = {name for name, tasks in HUB_PROVIDERS.items() if "text-to-image" in tasks}
    assert set(PROVIDER_NAMES) == theirs


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{c.provider}-{c.model.split('/')[-1]}-{'full' if c.params is FULL else 'minimal'}"
                              for c in CASES])
def test_imagegate_sends_what_inference_client_sends(
    captured: list[tuple[Case, Any, Any, dict[str, Any], Any]], index: int
) -> None:
    case, ours, theirs, client_result, our_result = captured[index]
    assert client_result["ok"], client_result
    found = differences(wire(ours), wire(theirs))
    wanted = {path: side for path, (side, _why) in case.expected.items()}
    assert found == wanted, f"{case.provider} {case.model}: ours {wire(ours)}\ntheirs {wire(theirs)}"
    image = our_result.images[0]
    assert [image.width, image.height] == client_result["size"]
