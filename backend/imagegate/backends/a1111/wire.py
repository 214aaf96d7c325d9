"""The AUTOMATIC1111 wire: its settings, the txt2img body and answer, what it accepts (pure)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from imagegate.backends.images import keep_asked
from imagegate.capabilities import REQUEST_FIELDS, Capabilities
from imagegate.config import HttpBackendSettings, url_from_env
from imagegate.errors import BadResponse
from imagegate.models import ImageRequest

__all__ = [
    "BUILT_IN",
    "DEFAULT_STEPS",
    "A1111Settings",
    "basic_auth_headers",
    "build_request",
    "discovered_capabilities",
    "from_env",
    "parse_response",
]

DEFAULT_STEPS = 20  # the UI's steps slider default (the API's own is 50)
_FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}
# What the API takes before anything is discovered: every field, no ranges (the API checks
# none), PNG (``samples_format`` defaults to png, modules/shared_options.py).
BUILT_IN = Capabilities(
    source="built-in: AUTOMATIC1111 API (modules/api/models.py: no ranges enforced)",
    takes=REQUEST_FIELDS, formats=("png",),
    defaults={"steps": DEFAULT_STEPS, "guidance_scale": 7.0, "sampler": "Euler", "width": 512},
)


class A1111Settings(HttpBackendSettings):
    """A local AUTOMATIC1111 webui started with ``--api``."""

    kind: Literal["a1111"] = "a1111"
    base_url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    queue: bool = True
    progress_interval_s: float = Field(default=0.5, gt=0, le=60)
    username_env: str | None = None
    password_env: str | None = None

    def secret_env_names(self) -> dict[str, str]:
        names = {}
        if self.username_env:
            names["username"] = self.username_env
        if self.password_env:
            names["password"] = self.password_env
        return names

    def required_secrets(self) -> tuple[str, ...]:
        return tuple(self.secret_env_names())


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``A1111_URL`` alone configures a local webui."""
    if not env.get("A1111_URL"):
        return []
    return [{"name": "a1111", "kind": "a1111", "base_url": url_from_env(env, "A1111_URL")}]


def build_request(
    request: ImageRequest, *, model: str | None, task_id: str | None = None
) -> dict[str, Any]:
    """The txt2img JSON body for ``request`` (pure); ``task_id`` goes as ``force_task_id``."""
    payload: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "width": request.width,
        "height": request.height,
        "seed": -1 if request.seed is None else request.seed,
        "batch_size": request.n,
        "n_iter": 1,
        "send_images": True,
        "save_images": False,
    }
    payload["steps"] = request.steps if request.steps is not None else DEFAULT_STEPS
    if request.guidance_scale is not None:
        payload["cfg_scale"] = request.guidance_scale
    if request.sampler:
        payload["sampler_name"] = request.sampler
    checkpoint = request.model or model
    if checkpoint:
        payload["override_settings"] = {"sd_model_checkpoint": checkpoint}
    if task_id is not None:
        payload["force_task_id"] = task_id
    return payload



def parse_response(
    body: Any, *, backend: str, asked: int | None = None
) -> tuple[list[tuple[bytes, int | None]], dict[str, Any]]:
    """Decode the images and pair each with its real seed (pure); with ``asked``, only the
    first ``asked`` are decoded and the note says how many more there were (images.py)."""
    if not isinstance(body, dict) or not isinstance(body.get("images"), list):
        raise BadResponse("txt2img answer has no 'images' list", backend=backend)
    seeds: list[Any] = []
    info = body.get("info")
    if isinstance(info, str):
        try:
            parsed = json.loads(info)
            seeds = list(parsed.get("all_seeds") or [parsed.get("seed")])
            first = int(parsed.get("index_of_first_image") or 0)
        except (ValueError, TypeError, AttributeError):
            first = 0
    else:
        first = 0
    images = body["images"][first:]
    if not images:
        raise BadResponse("txt2img answered with no image", backend=backend)
    note: dict[str, Any] = {}
    if asked is not None:
        images, note = keep_asked(images, asked, backend=backend)
    out: list[tuple[bytes, int | None]] = []
    for i, b64 in enumerate(images):
        if not isinstance(b64, str):
            raise BadResponse("txt2img image is not a base64 string", backend=backend)
        try:
            data = base64.b64decode(b64.split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadResponse("txt2img image is not valid base64", backend=backend) from exc
        seed = seeds[i] if i < len(seeds) else None
        out.append((data, int(seed) if isinstance(seed, int | float) else None))
    return out, note


def discovered_capabilities(
    models: Any, samplers: Any, schedulers: Any, options: Any
) -> Capabilities:
    """What this webui has, from its list endpoints' answers (pure; None: not answered).

    A checkpoint answers to every name in ``CheckpointInfo.ids`` (modules/sd_models.py:
    hash, model_name, title, name, file stem, ``name [hash]``, short and full sha256); a
    sampler to its exact name, optionally followed by a scheduler's label, name or alias
    (``get_sampler_and_scheduler``, 1.9+).
    """
    titles: list[str] | None = None
    aliases: list[str] = []
    if isinstance(models, list):
        titles = []
        for m in (m for m in models if isinstance(m, dict) and m.get("title")):
            title = str(m["title"])
            name = title.rsplit(" [", 1)[0]
            stem = str(m.get("filename") or name).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            sha = str(m.get("sha256") or "")
            ids = [m.get("hash"), m.get("model_name"), name, stem, f"{name} [{m.get('hash')}]"]
            if sha:
                ids += [sha[:10], sha, f"{name} [{sha[:10]}]", f"{stem} [{sha[:10]}]"]
            titles.append(title)
            aliases += [str(i) for i in ids if i and str(i) != title]
    names = [str(x["name"]) for x in samplers if isinstance(x, dict) and x.get("name")] \
        if isinstance(samplers, list) else None
    suffixes: list[str] = []
    for x in schedulers if isinstance(schedulers, list) else []:
        if isinstance(x, dict):
            suffixes += [str(v) for v in (x.get("label"), x.get("name"), *(x.get("aliases") or [])) if v]
    fmt = _FORMATS.get(str((options or {}).get("samples_format", "png")).lower(), "png") \
        if isinstance(options, dict) else "png"
    found = [what for what, value in (("checkpoints", titles), ("samplers", names)) if value is not None]
    return BUILT_IN.model_copy(update={
        "source": "discovered: " + (", ".join(found) or "nothing") + " from the webui's API",
        "models": tuple(titles) if titles is not None else None,
        "model_aliases": tuple(dict.fromkeys(aliases)),
        "samplers": tuple(names) if names is not None else None,
        "scheduler_suffixes": tuple(dict.fromkeys(suffixes)),
        "formats": (fmt,),
    })


def basic_auth_headers(user: str | None, password: str | None) -> dict[str, str]:
    """``--api-auth`` credentials as an Authorization header (aiohttp's BasicAuth is deprecated)."""
    if not user:
        return {}
    token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


