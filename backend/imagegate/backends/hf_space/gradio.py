"""The pure half of the Space backend, and THE one place gradio_client/httpx errors become ours.

Nothing here does I/O: building the keyword arguments for a Space from an ImageRequest,
picking the endpoint, finding the image (and seed) in whatever the endpoint returned, judging
a Hub runtime stage, and translating foreign exceptions (:func:`map_gradio_errors`).

Importing this module disables telemetry before gradio_client/huggingface_hub read their
environment: ``HF_HUB_DISABLE_TELEMETRY=1`` and ``GRADIO_ANALYTICS_ENABLED=False`` unless the
user set them (gradio_client 2.7.2 ignores ``analytics_enabled=False`` when the variable is
unset: it computes ``analytics_enabled or os.getenv(..., "True") == "True"``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import os
import re
import urllib.parse
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx
from gradio_client import exceptions as gc_exceptions
from gradio_client import utils as gc_utils

from imagegate.backends.download import same_origin
from imagegate.backends.hf_space.spaces import BROKEN, STARTING
from imagegate.backends.transport import error_for_status, error_text
from imagegate.config import Timeouts
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    QuotaExhausted,
    RateLimited,
    Rejected,
    ServerError,
    Unavailable,
)
from imagegate.models import ImageRequest

__all__ = [
    "ImageRef",
    "app_error",
    "build_arguments",
    "check_arguments",
    "client_options",
    "file_url",
    "find_image",
    "map_gradio_errors",
    "pick_api_name",
    "same_origin",
    "stream_cut_error",
]


IMAGE_COMPONENTS = ("Image", "Gallery", "ImageEditor", "AnnotatedImage", "ImageSlider")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")

# ZeroGPU texts (the `spaces` package): "You have exceeded your [free |Pro ]GPU quota
# (60s requested vs. 45s left). ... Try again in 0:12:34"; "No GPU was available [after 60s]".
_GPU_QUOTA = re.compile(r"exceeded your (?:\w+ )?GPU quota|GPU quota exceeded", re.IGNORECASE)
_NO_GPU = re.compile(r"No GPU (?:is currently |was )?available", re.IGNORECASE)
_TRY_AGAIN = re.compile(r"Try again in (?:(\d+) days?, )?(\d+):(\d{2}):(\d{2})")
_HTML_TAG = re.compile(r"<[^>]+>")
# The caller's mistakes, as gradio words them: a Slider/Number out of range (gradio
# components/number.py raise_if_out_of_bounds; Slider since 5.39), a Dropdown/Radio value not
# among the choices (components/dropdown.py, radio.py).
_GRADIO_REFUSED = re.compile(
    r"Value .* is (?:less than minimum|greater than maximum) value|is not in the list of choices"
)
# gradio_client <= 1.8.0 prefixes every AppError message with this (1.9.0 dropped it).
_UPSTREAM_PREFIX = "The upstream Gradio app has raised an exception: "
# gradio_client utils.construct_args refuses a call before sending anything (TypeError), the
# same words in 1.3.0 and 2.7.2.
_ARGUMENT_ERRORS = re.compile(
    r"No value provided for required argument|is not a valid key-word argument"
    r"|is already set as a positional argument"
)

_ValidationError: type[Exception] = getattr(
    gc_exceptions, "ValidationError", gc_exceptions.AppError
)


# ---------------------------------------------------------------- arguments


def build_arguments(
    request: ImageRequest,
    inputs: Mapping[str, str],
    fixed: Mapping[str, Any],
    *,
    seed: int | None,
    model: str | None = None,
    required: Collection[str] = (),
) -> dict[str, Any]:
    """The Space's keyword arguments for ``request`` (pure).

    ``inputs`` maps our field names to the Space's parameter names; fields the caller left
    unset are not sent (the Space's defaults apply), except ``seed``, which is ``seed`` here
    (the caller's, or one drawn by the backend so that the image can be reproduced), and an
    empty negative prompt whose parameter is in ``required`` (a text box with no initial
    value: gradio_client refuses a call without it), which is sent as ``""``.
    """
    values: dict[str, Any] = {
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt or None,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance_scale": request.guidance_scale,
        "seed": seed,
        "sampler": request.sampler,
        "model": request.model or model,
    }
    if inputs.get("negative_prompt") in required and values["negative_prompt"] is None:
        values["negative_prompt"] = ""
    arguments = dict(fixed)
    for field, parameter in inputs.items():
        if values.get(field) is not None:
            arguments[parameter] = values[field]
    return arguments


def client_options(client_class: Any) -> dict[str, Any]:
    """Keyword arguments only some gradio_client versions take: ``analytics_enabled`` exists
    from 1.10 (wheels 1.9.1 vs 1.10.0; an unknown keyword is a TypeError before 1.10). It is
    passed where it exists; the environment variables set above are what turn telemetry off."""
    try:
        names = inspect.signature(client_class).parameters
    except (TypeError, ValueError):
        return {}
    return {"analytics_enabled": False} if "analytics_enabled" in names else {}


def check_arguments(
    arguments: Mapping[str, Any], parameters: list[dict[str, Any]], *, api_name: str, backend: str
) -> None:
    """Refuse, before sending, names the endpoint does not take (config and Space disagree)."""
    known = [str(p["parameter_name"]) for p in parameters if p.get("parameter_name")]
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise Rejected(
            f"the Space's {api_name} has no parameter {unknown[0]!r} (check this backend's "
            f"'inputs'/'fixed'; it takes: {', '.join(known) or 'nothing by name'})",
            backend=backend,
        )


def pick_api_name(info: Mapping[str, Any]) -> str | None:
    """The first named endpoint with an image among its outputs (from ``view_api`` as dict)."""
    for api_name, endpoint in (info.get("named_endpoints") or {}).items():
        returns = endpoint.get("returns") or []
        if any(r.get("component") in IMAGE_COMPONENTS for r in returns):
            return str(api_name)
    return None


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageRef:
    """Where the image of a result is: a Gradio FileData dict, a URL, a local path, or data."""

    kind: Literal["file", "url", "path", "pil", "bytes"]
    value: Any


def find_image(result: Any) -> tuple[ImageRef | None, int | None]:
    """The first image-like element of ``result`` and, for a tuple, the first integer (seed)."""
    if isinstance(result, tuple):
        image = next((ref for ref in map(_image_ref, result) if ref is not None), None)
        seed = next((s for s in map(_as_seed, result) if s is not None), None)
        return image, seed
    return _image_ref(result), None


def _image_ref(value: Any) -> ImageRef | None:
    if isinstance(value, dict):
        if isinstance(value.get("path"), str) or isinstance(value.get("url"), str):
            return ImageRef("file", value)
        if "image" in value:  # a gallery item {"image": FileData, "caption": ...}
            return _image_ref(value["image"])
        return None
    if isinstance(value, list | tuple):  # a gallery, or a (image, caption) pair
        return next((ref for ref in map(_image_ref, value) if ref is not None), None)
    if isinstance(value, bytes | bytearray):
        return ImageRef("bytes", bytes(value))
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            return ImageRef("url", value)
        if value.lower().split("?")[0].endswith(_IMAGE_SUFFIXES):
            return ImageRef("path", value)
        return None
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image
        return ImageRef("pil", value)
    return None


def _as_seed(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def file_url(filedata: Mapping[str, Any], root: str) -> str:
    """The download URL of a FileData, built like gradio_client does (``{root}file={path}``)."""
    path = filedata.get("path")
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        return path
    if isinstance(path, str) and path:
        return root.rstrip("/") + "/file=" + urllib.parse.quote(path, safe="/")
    return str(filedata["url"])


# ---------------------------------------------------------------- errors


def app_error(message: str | None, *, backend: str) -> BackendError:
    """What the app raised, by its text: a value gradio refused (the caller's: rejected),
    ZeroGPU quota, no GPU free, or a plain app error."""
    text = error_text(_HTML_TAG.sub("", message or "the app raised an error without a message"))
    text = text.removeprefix(_UPSTREAM_PREFIX)
    if _GRADIO_REFUSED.search(text):
        return Rejected(f"the Space refused the value: {text}", backend=backend)
    if _GPU_QUOTA.search(text):
        return QuotaExhausted(text, backend=backend, retry_after=_try_again_s(text))
    if _NO_GPU.search(text):
        return Unavailable(text, backend=backend, retry_after=60.0)
    return ServerError(f"the Space raised: {text}", backend=backend)


def _try_again_s(text: str) -> float | None:
    match = _TRY_AGAIN.search(text)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def stream_cut_error(elapsed: float, read_timeout: float, *, backend: str) -> BackendError:
    """The job ended without an answer because gradio_client's result stream closed.

    gradio_client turns a ReadTimeout on its SSE stream into a plain CancelledError. A stream
    read timeout needs ``read_timeout`` (httpx's) seconds of silence, and every job's own
    queue messages reset that silence, so it can only happen to a job that has run at least
    that long; a shorter job lost its connection.
    """
    if elapsed >= read_timeout - 0.05:
        return GenerationTimeout(
            f"no answer within read_timeout_s={read_timeout:g} s", backend=backend
        )
    return ConnectFailed("the Space's result stream closed before the answer", backend=backend)


@contextlib.contextmanager
def map_gradio_errors(backend: str, timeouts: Timeouts) -> Iterator[None]:
    """Translate gradio_client/httpx exceptions into the taxonomy, once, at the boundary."""
    try:
        yield
    except BackendError:
        raise
    except httpx.ConnectTimeout as exc:
        raise HandshakeTimeout(
            f"connection/TLS handshake did not complete within {timeouts.connect:g} s",
            backend=backend,
        ) from exc
    except httpx.TimeoutException as exc:  # read, write, pool
        raise GenerationTimeout(
            f"no data for read_timeout_s={timeouts.read:g} s ({type(exc).__name__})",
            backend=backend,
        ) from exc
    except httpx.ConnectError as exc:
        refused = _caused_by(exc, ConnectionRefusedError)
        what = "connection refused" if refused else f"cannot connect: {exc}"
        raise ConnectFailed(what, backend=backend, refused=refused) from exc
    except httpx.TransportError as exc:  # reset, closed mid-answer, protocol errors
        raise ConnectFailed(
            f"connection lost: {type(exc).__name__}: {exc}", backend=backend
        ) from exc
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        raise error_for_status(status, error_text(exc.response.text), backend=backend) from exc
    except (gc_utils.QueueError, gc_utils.TooManyRequestsError) as exc:
        status = 429 if isinstance(exc, gc_utils.TooManyRequestsError) else 503
        raise RateLimited(f"the Space is busy: {exc}", backend=backend, status=status) from exc
    except gc_exceptions.AuthenticationError as exc:
        raise AuthFailed(
            f"the Space refused our credentials: {exc}", backend=backend, status=401
        ) from exc
    except gc_exceptions.AppError as exc:
        raise app_error(getattr(exc, "message", None) or str(exc), backend=backend) from exc
    except _ValidationError as exc:
        raise Rejected(
            f"the Space refused the inputs: {error_text(str(exc))}", backend=backend
        ) from exc
    except ValueError as exc:
        raise _value_error(exc, backend) from exc
    except TypeError as exc:
        if not _ARGUMENT_ERRORS.search(str(exc)):
            raise BadResponse(
                f"unexpected TypeError: {error_text(str(exc))}", backend=backend
            ) from exc
        raise Rejected(
            f"the Space's endpoint refused the arguments: {error_text(str(exc))}", backend=backend
        ) from exc
    except concurrent.futures.CancelledError:
        raise  # the caller decides: our own cancel, or a cut result stream (stream_cut_error)
    except Exception as exc:  # an exchange gradio_client could not make sense of
        raise BadResponse(
            f"unexpected {type(exc).__name__}: {error_text(str(exc))}", backend=backend
        ) from exc


def _value_error(exc: ValueError, backend: str) -> BackendError:
    text = error_text(str(exc))
    if "invalid state" in text:
        return Unavailable(text, backend=backend, retry_after=BROKEN.retry_after_s)
    if "Server stopped" in text:
        return Unavailable(
            "the Gradio server stopped", backend=backend, retry_after=STARTING.retry_after_s
        )
    if "does not support key-word arguments" in text:
        return Rejected(f"the Space's endpoint takes no keyword arguments: {text}", backend=backend)
    if "Unknown protocol" in text or "Gradio 2.x" in text:
        return Rejected(f"this Gradio app is too old for gradio_client: {text}", backend=backend)
    return BadResponse(f"unexpected answer: {text}", backend=backend)


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
