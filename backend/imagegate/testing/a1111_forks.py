"""Forge, reForge and SD.Next as the A1111 stand-in can be: where they answer the same API
differently (``create_app(flavor=...)``).

Sources (notes/providers_new.md §5): A1111 base c8a5322d [A1]; Forge
lllyasviel/stable-diffusion-webui-forge@dfdcbab6 [FG] (``modules/api/api.py``,
``modules/sd_schedulers.py``); reForge Panchovix/stable-diffusion-webui-reForge@3b56b268
[RF]; SD.Next vladmandic/automatic@431bcc36 [SN] (``modules/api/api.py``, ``helpers.py``,
``middleware.py``, ``generate.py``, ``models.py``, ``sd_samplers_diffusers.py``). The
differences kept here:

- Errors. A1111 and reForge: the webui's ``api_middleware`` -> ``{"error", "detail", "body",
  "errors"}`` with ``X-Process-Time``. Forge: that middleware is commented out [FG api.py
  ``#api_middleware(self.app)  # FIXME``], so FastAPI's own ``{"detail": "..."}``, no
  ``X-Process-Time``, and a 422 in pydantic v2's shape (``type``, ``loc``, ``msg``, ``input``,
  ``url``; Forge pins pydantic 2.8). SD.Next: its own middleware -> ``{"error", "code",
  "detail", "body", "errors"}`` with ``X-Process-Time`` [SN middleware.py ``handle_exception``].
- Samplers. A1111 1.9+, Forge and reForge split a trailing scheduler off the name and
  silently use ``samplers[0]`` for an unknown one [FG ``get_sampler_and_scheduler``]; SD.Next
  has its own (diffusers) sampler set, no ``/sdapi/v1/schedulers``, and answers an unknown
  name with 404 "Sampler not found" [SN helpers.py ``validate_sampler_name``].
- Defaults of an omitted field: SD.Next 20 steps, 1024x1024, cfg 6.0, sampler UniPC [SN
  models.py]; the others A1111's 50 / 512x512 / 7.0 / Euler.
- Routes. SD.Next under ``--api-only`` has no ``/internal/progress`` (registered by its UI
  only) and never registers ``/internal/ping``; its txt2img has no ``force_task_id`` (an
  unknown field: ignored). Forge and reForge keep A1111's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["FLAVORS", "Flavor"]

A1111_SAMPLERS = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Euler a", "Euler", "LMS", "Heun", "DDIM", "UniPC"]
# (name, label, aliases) as GET /sdapi/v1/schedulers lists them (modules/sd_schedulers.py)
A1111_SCHEDULERS = [
    ("automatic", "Automatic", None), ("uniform", "Uniform", None), ("karras", "Karras", None),
    ("exponential", "Exponential", None), ("sgm_uniform", "SGM Uniform", ["SGMUniform"]),
]
_FORGE_SCHEDULERS = A1111_SCHEDULERS + [  # [FG] sd_schedulers.py adds these
    ("polyexponential", "Polyexponential", None), ("kl_optimal", "KL Optimal", None),
    ("align_your_steps", "Align Your Steps", None), ("simple", "Simple", None), ("normal", "Normal", None),
    ("ddim", "DDIM", None), ("beta", "Beta", None), ("turbo", "Turbo", None),
]
_SDNEXT_SAMPLERS = ["Default", "UniPC", "DDIM", "Euler", "Euler a", "Euler SGM", "Euler EDM", "DPM++", "DPM++ 2M",
                    "DPM++ 3M", "DPM++ SDE", "DPM++ 2M SDE", "Heun", "DEIS", "LMS"]  # [SN] sd_samplers_diffusers


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def _a1111_error(status: int, detail: str | None = None) -> dict[str, Any]:
    detail = detail or {401: "Incorrect username or password", 500: "OutOfMemoryError"}.get(status) or _phrase(status)
    return {"error": "HTTPException", "detail": detail, "body": "", "errors": ""}


def _fastapi_error(status: int, detail: str | None = None) -> dict[str, Any]:
    return {"detail": detail or _phrase(status)}


def _sdnext_error(status: int, detail: str | None = None) -> dict[str, Any]:
    detail = detail or _phrase(status)
    return {"error": "HTTPException", "code": status, "detail": detail, "body": "", "errors": f"{status}: {detail}"}


def _v1_problem(key: str, kind: str, value: Any = None) -> dict[str, Any]:
    msg = {"int": "value is not a valid integer", "float": "value is not a valid float", "str": "str type expected"}
    return {"loc": ["body", key], "msg": msg[kind], "type": f"type_error.{'integer' if kind == 'int' else kind}"}


def _v2_problem(key: str, kind: str, value: Any = None) -> dict[str, Any]:
    types = {"int": ("int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
             "float": ("float_parsing", "Input should be a valid number, unable to parse string as a number"),
             "str": ("string_type", "Input should be a valid string")}
    kind_name, msg = types[kind]
    return {"type": kind_name, "loc": ["body", key], "msg": msg, "input": value,
            "url": f"https://errors.pydantic.dev/2.8/v/{kind_name}"}


@dataclass(frozen=True)
class Flavor:
    """How one webui answers the A1111 API."""

    name: str
    error: Callable[..., dict[str, Any]]  # (status, detail) -> the error body
    problem: Callable[..., dict[str, Any]]  # (field, "int"|"float"|"str") -> one 422 item
    samplers: list[str]
    schedulers: list[tuple[str, str, list[str] | None]] | None  # None: no /sdapi/v1/schedulers
    unknown_sampler_404: bool  # False: silently samplers[0]
    defaults: dict[str, Any]  # steps, width, height, cfg_scale, sampler
    internal_api: bool  # /internal/progress (and /internal/ping)
    honours_force_task_id: bool
    process_time: bool  # an X-Process-Time header on every answer


_A1111_DEFAULTS = {"steps": 50, "width": 512, "height": 512, "cfg_scale": 7.0, "sampler": "Euler"}
FLAVORS: dict[str, Flavor] = {
    "a1111": Flavor("a1111", _a1111_error, _v1_problem, A1111_SAMPLERS, A1111_SCHEDULERS, False, _A1111_DEFAULTS,
                    True, True, True),
    "forge": Flavor("forge", _fastapi_error, _v2_problem, A1111_SAMPLERS, _FORGE_SCHEDULERS, False, _A1111_DEFAULTS,
                    True, True, False),
    "reforge": Flavor("reforge", _a1111_error, _v1_problem, A1111_SAMPLERS, _FORGE_SCHEDULERS, False,
                      _A1111_DEFAULTS, True, True, True),
    "sdnext": Flavor("sdnext", _sdnext_error, _v1_problem, _SDNEXT_SAMPLERS, None, True,
                     {"steps": 20, "width": 1024, "height": 1024, "cfg_scale": 6.0, "sampler": "UniPC"},
                     False, False, True),
}
