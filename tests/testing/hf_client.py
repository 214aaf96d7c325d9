"""huggingface_hub's own ``InferenceClient``, pointed at the router stand-in: run as a script by
the differential and contract tests, never imported by them.

    python hf_client.py URL TOKEN CASES_JSON

``CASES_JSON`` is a list of ``{"provider", "model", "params", "bill_to"?}``; one JSON line is
printed per case: ``{"ok": true, "size": [w, h]}`` or ``{"ok": false, "error": "..."}``.

Where the client sends things is fixed at import time (/work/notes/hf_providers.md §6), so the
caller's environment sets ``HF_ENDPOINT`` (the Hub) and this script patches
``INFERENCE_PROXY_TEMPLATE`` before ``InferenceClient`` is imported (hf-inference copies it
then). Nothing else in the client is changed, except:

- its poll sleeps (WaveSpeed 0.5 s before every poll, Z.ai 5 s, fal's queue 0.5 s) are 0;
- WaveSpeed's poll: the client adds the router's ``/wavespeed`` prefix only when the host is
  literally ``router.huggingface.co`` (``wavespeed.py`` ``get_response``), which a loopback
  stand-in cannot be; the transport below adds it, as the client itself does against the real
  router, and only to that path.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx2
import huggingface_hub
from huggingface_hub import constants

url, token, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
constants.INFERENCE_PROXY_TEMPLATE = url + "/{provider}"  # before InferenceClient is imported

from huggingface_hub import InferenceClient
from huggingface_hub.inference._providers import fal_ai, wavespeed, zai_org
from huggingface_hub.utils._http import hf_request_event_hook

fal_ai._POLLING_INTERVAL = wavespeed._POLLING_INTERVAL = zai_org._POLLING_INTERVAL = 0


class RouterPrefix(httpx2.HTTPTransport):
    """WaveSpeed's result path under the router's prefix (see the module docstring)."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/api/v3/predictions/"):
            request.url = request.url.copy_with(path="/wavespeed" + request.url.path)
        return super().handle_request(request)


huggingface_hub.set_client_factory(lambda: httpx2.Client(
    transport=RouterPrefix(), event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True,
    timeout=30,
))

for case in cases:
    result: dict[str, Any]
    try:
        client = InferenceClient(provider=case["provider"], api_key=token, bill_to=case.get("bill_to"))
        image = client.text_to_image("a red fox", model=case["model"], **case["params"])
        result = {"ok": True, "size": list(image.size)}
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
