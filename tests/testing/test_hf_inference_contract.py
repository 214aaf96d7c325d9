"""huggingface_hub's own ``InferenceClient`` against the HF emulator (a contract test: the
emulator serves the routes the real client calls, in the shapes it reads).

The client runs in a subprocess, because where it sends things is fixed at import time
(notes/hf_providers.md §6): ``HF_ENDPOINT`` (the Hub) is read when ``huggingface_hub`` is
imported, and the hf-inference router base is copied from ``INFERENCE_PROXY_TEMPLATE`` when
``InferenceClient`` is. The test process has imported both long before (and sets
``HF_HUB_OFFLINE``, which blocks even loopback requests). Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from imagegate.testing import Knobs, serve_app
from imagegate.testing import hf_inference as hf_emulator

TOKEN = "hf_contract_0123456789"
MODEL = "emulator/tiny"
SCRIPT = """
import json, sys
import huggingface_hub.constants as constants
constants.INFERENCE_PROXY_TEMPLATE = sys.argv[1] + "/{provider}"  # before InferenceClient
from huggingface_hub import InferenceClient

url, mode, token, model = sys.argv[1:5]
if mode == "provider":
    client = InferenceClient(provider="hf-inference", api_key=token)
    image = client.text_to_image("a red fox", model=model, width=64, height=96, seed=3,
                                 num_inference_steps=2, negative_prompt="fog")
else:
    client = InferenceClient(base_url=f"{url}/hf-inference/models/{model}", api_key=token)
    image = client.text_to_image("a red fox", width=80, height=64, seed=5)
print(json.dumps({"size": list(image.size), "format": image.format}))
"""


async def run_client(url: str, mode: str, tmp_path: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, url, mode, TOKEN, MODEL, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_inference_client_with_provider_hf_inference(tmp_path: Path) -> None:
    knobs = Knobs()
    async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN)) as url:
        answer = await run_client(url, "provider", tmp_path)
    assert answer == {"size": [64, 96], "format": "PNG"}
    hub, post = [r for r in knobs.requests if r.path.startswith(("/api/", "/hf-inference/"))]
    # the client checks the model's pipeline_tag first: GET /api/models/{id}, no query
    assert (hub.method, hub.path, hub.query) == ("GET", f"/api/models/{MODEL}", {})
    assert (post.method, post.path) == ("POST", f"/hf-inference/models/{MODEL}")
    headers = {k.lower(): v for k, v in post.headers.items()}
    assert headers["authorization"] == f"Bearer {TOKEN}" and headers["accept"] == "image/png"
    assert post.body == {"inputs": "a red fox", "parameters": {
        "negative_prompt": "fog", "height": 96, "width": 64, "num_inference_steps": 2, "seed": 3,
    }}


async def test_inference_client_with_base_url(tmp_path: Path) -> None:
    knobs = Knobs()
    async with serve_app(hf_emulator.create_app(knobs=knobs, api_key=TOKEN)) as url:
        answer = await run_client(url, "base_url", tmp_path)
    assert answer == {"size": [80, 64], "format": "PNG"}
    (post,) = knobs.requests  # a URL needs no Hub lookup at all
    assert post.path == f"/hf-inference/models/{MODEL}"
    assert post.body == {"inputs": "a red fox", "parameters": {"height": 64, "width": 80, "seed": 5}}


async def test_the_hub_routes_answer_both_expand_forms_and_the_plain_info(tmp_path: Path) -> None:
    import aiohttp

    async with serve_app(hf_emulator.create_app(api_key=TOKEN)) as url, aiohttp.ClientSession() as s:
        async def get(query: str) -> dict[str, object]:
            async with s.get(f"{url}/api/models/{MODEL}{query}") as resp:
                return dict(await resp.json())

        plain = await get("")
        python_form = await get("?expand=inferenceProviderMapping")
        js_form = await get("?expand[]=inferenceProviderMapping")
    assert plain["pipeline_tag"] == "text-to-image" and "inferenceProviderMapping" not in plain
    assert python_form == js_form
    assert set(python_form) == {"_id", "id", "inferenceProviderMapping"}
