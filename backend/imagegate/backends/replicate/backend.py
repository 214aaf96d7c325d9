"""The Replicate backend: a prediction made, waited for, polled, cancelled; its outputs fetched."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from pydantic import Field, field_validator

from imagegate.backends.download import same_origin
from imagegate.backends.http import MAX_DOWNLOADS, Answer, Failed, HttpBackend, Pending, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.logprogress import tqdm_progress
from imagegate.backends.replicate.inputs import (
    FLUX_SCHNELL,
    InputSchema,
    build_input,
    capabilities_from,
    parse_schema,
)
from imagegate.backends.stopping import stop_shielded
from imagegate.backends.transport import error_for_status, error_text, parse_retry_after
from imagegate.capabilities import Capabilities
from imagegate.config import HttpBackendSettings
from imagegate.errors import (
    BackendError,
    BadResponse,
    ConnectFailed,
    ContentFiltered,
    GenerationTimeout,
    HandshakeTimeout,
    ServerError,
)
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = [
    "ModelRef",
    "Prediction",
    "ReplicateBackend",
    "ReplicateSettings",
    "error_from_response",
    "from_env",
    "parse_prediction",
    "prediction_error",
]

log = get_logger(__name__)

_DEFAULT_MODEL = "black-forest-labs/flux-schnell"
_JSON_CAP = 4 * 1024 * 1024  # a prediction with its logs; a model with its schema
_POLL_READ_S = 30.0
_TERMINAL = ("succeeded", "failed", "canceled")
_SEED = re.compile(r"(?i)using seed:?\s*(\d+)")
_REF = re.compile(r"^(?:([\w.-]+)/([\w.-]+))?(?::?([0-9a-f]{64}))?$")


class ReplicateSettings(HttpBackendSettings):
    """Replicate's predictions API."""

    kind: Literal["replicate"] = "replicate"
    base_url: str = "https://api.replicate.com"
    model: str | None = _DEFAULT_MODEL
    api_key_env: str = "REPLICATE_API_TOKEN"
    wait_s: int = Field(default=60, ge=1, le=60)  # Prefer: wait=N, N in 1..60 [RP]
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    read_timeout_s: float = Field(default=180.0, gt=0, le=3600)

    @field_validator("model")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None:
            ModelRef.parse(value)  # ValueError: pydantic reports it naming the key
        return value

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``REPLICATE_API_TOKEN`` configures Replicate (priority 26)."""
    if not env.get("REPLICATE_API_TOKEN", "").strip():
        return []
    return [{"name": "replicate", "kind": "replicate", "priority": 26}]


@dataclass(frozen=True)
class ModelRef:
    """``owner/name``, ``owner/name:version`` or a bare version id."""

    owner: str | None
    name: str | None
    version: str | None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        match = _REF.match(text.strip())
        if not match or not (match[3] or (match[1] and match[2])):
            raise ValueError(f"must be owner/name or owner/name:<64-hex version> (got {text!r})")
        return cls(match[1], match[2], match[3])

    def create_path(self) -> str:
        if self.version:
            return "/v1/predictions"
        return f"/v1/models/{self.owner}/{self.name}/predictions"

    def schema_path(self) -> str | None:
        if self.owner is None:
            return None  # a bare version: no route tells its schema
        if self.version:
            return f"/v1/models/{self.owner}/{self.name}/versions/{self.version}"
        return f"/v1/models/{self.owner}/{self.name}"

    def __str__(self) -> str:
        head = f"{self.owner}/{self.name}" if self.owner else ""
        return head + (f":{self.version}" if self.version and head else self.version or "")


@dataclass(frozen=True)
class Prediction:
    """One prediction object, read."""

    id: str
    status: str
    outputs: list[str]
    error: str | None
    logs: str
    get_url: str | None
    cancel_url: str | None


def parse_prediction(body: Any, *, backend: str) -> Prediction:
    """A prediction object (pure); BadResponse when it has no id or status."""
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("status"), str):
        raise BadResponse("prediction has no 'id' and 'status'", backend=backend)
    output = body.get("output")
    if isinstance(output, str):
        outputs = [output]
    else:
        outputs = [o for o in output if isinstance(o, str)] if isinstance(output, list) else []
    urls = body.get("urls") if isinstance(body.get("urls"), dict) else {}
    assert isinstance(urls, dict)
    error = body.get("error")
    return Prediction(
        body["id"], body["status"], outputs, str(error) if error else None, str(body.get("logs") or ""),
        urls.get("get") if isinstance(urls.get("get"), str) else None,
        urls.get("cancel") if isinstance(urls.get("cancel"), str) else None,
    )


def prediction_error(prediction: Prediction, *, backend: str) -> BackendError:
    """The error of a failed or canceled prediction (pure)."""
    text = error_text(prediction.error or f"prediction {prediction.status}")
    message = f"prediction {prediction.id} {prediction.status}: {text}"
    if "nsfw" in text.lower():
        return ContentFiltered(message, backend=backend)
    return ServerError(message, backend=backend)


def error_from_response(status: int, body: bytes, headers: Mapping[str, str], *, backend: str) -> BackendError:
    """The taxonomy's error for a problem-details answer, ``invalid_fields`` spelt out (pure)."""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    parts: list[str] = []
    if isinstance(doc, dict):
        parts = [str(doc[k]) for k in ("title", "detail") if doc.get(k)]
        for item in doc.get("invalid_fields") or []:
            if isinstance(item, dict):
                parts.append(f"{item.get('field') or 'input'}: {item.get('description')}")
    text = error_text("; ".join(parts) or body.decode("utf-8", "replace")) or "no detail"
    return error_for_status(status, text, backend=backend, retry_after=parse_retry_after(headers.get("Retry-After")))


class ReplicateBackend(HttpBackend[ReplicateSettings]):
    """Replicate's predictions API."""

    kind = "replicate"

    def __init__(
        self, settings: ReplicateSettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._ref = ModelRef.parse(settings.model or _DEFAULT_MODEL)
        self._schema: InputSchema | None = FLUX_SCHNELL if str(self._ref) == _DEFAULT_MODEL else None
        self._discovered = False

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_from(self._schema)

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        if not self._discovered:
            await self._discover(deadline)
        body: dict[str, Any] = {"input": build_input(request, self._schema)}
        if self._ref.version:
            body["version"] = self._ref.version
        started = time.monotonic()
        wait = int(min(self.settings.wait_s, deadline.remaining() - 1, self.timeouts.read - 1))
        headers = {"Prefer": f"wait={wait}"} if wait >= 1 else {}
        answer = await self.send("POST", self.base_url + self._ref.create_path(), json=body, headers=headers,
                                 deadline=deadline, cap=_JSON_CAP, ok=(200, 201, 202))
        prediction = parse_prediction(answer.json(backend=self.name), backend=self.name)
        job_deadline = Deadline(min(deadline.at, started + self.timeouts.read))
        reporter = self.reporter
        try:
            if prediction.status not in _TERMINAL:
                self._report(prediction, reporter)
                prediction = await self.poll(
                    lambda: self._check(prediction, reporter, job_deadline), deadline=job_deadline,
                    interval=self.settings.poll_interval_s, what=f"prediction {prediction.id}",
                )
        except (asyncio.CancelledError, GenerationTimeout):
            await stop_shielded(lambda d: self._cancel(prediction, d), backend=self.name, job=prediction.id)
            raise
        if prediction.status != "succeeded":
            raise prediction_error(prediction, backend=self.name)
        if not prediction.outputs:
            raise BadResponse(f"prediction {prediction.id} succeeded with no output", backend=self.name)
        outputs, note = keep_asked(prediction.outputs, request.n, backend=self.name)
        seeds = _SEED.findall(prediction.logs)
        seed = int(seeds[-1]) if seeds else None
        blobs = await gather_all((self._fetch(url, deadline) for url in outputs), limit=MAX_DOWNLOADS)
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None, quote=False,
                        info={"prediction_id": prediction.id, **(note if i == 0 else {})})
            for i, data in enumerate(blobs)
        ]

    def _own(self, url: str | None, prediction: Prediction, suffix: str = "") -> str:
        """``url`` when it has base_url's origin, else the prediction's route on base_url."""
        if url and same_origin(url, self.base_url):
            return url
        return f"{self.base_url}/v1/predictions/{prediction.id}{suffix}"

    async def _check(self, first: Prediction, reporter: Reporter, deadline: Deadline) -> Prediction | Pending | Failed:
        answer = await self.send("GET", self._own(first.get_url, first), deadline=deadline, cap=_JSON_CAP,
                                 read=min(self.timeouts.read, _POLL_READ_S))
        prediction = parse_prediction(answer.json(backend=self.name), backend=self.name)
        if prediction.status in _TERMINAL:
            return prediction
        self._report(prediction, reporter)
        return Pending(prediction.status)

    def _report(self, prediction: Prediction, reporter: Reporter) -> None:
        if not reporter.listening:
            return
        if prediction.status == "starting":
            reporter.queued()
        elif prediction.status == "processing":
            steps = tqdm_progress([prediction.logs])
            reporter.progress(step=steps[0] if steps else None, steps=steps[1] if steps else None)

    async def _cancel(self, prediction: Prediction, deadline: Deadline) -> str:
        url = self._own(prediction.cancel_url, prediction, "/cancel")
        answer = await self.send("POST", url, deadline=deadline, cap=_JSON_CAP, ok=(200, 201, 202))
        return f"prediction {parse_prediction(answer.json(backend=self.name), backend=self.name).status}"

    async def _fetch(self, url: str, deadline: Deadline) -> bytes:
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise BadResponse("a data: output is not valid base64", backend=self.name) from exc
        if not url.startswith(("http://", "https://")):
            raise BadResponse("an output is not an http(s) or data: URL", backend=self.name)
        return await self.download(url, deadline, auth=False)

    def error_for(self, answer: Answer) -> BackendError:
        return error_from_response(answer.status, answer.body, answer.headers, backend=self.name)

    async def _discover(self, deadline: Deadline) -> None:
        """Read the model's input schema (free); keep what we had when Replicate answers
        with an error. A server that cannot be reached raises (the prediction would fail the
        same way), and the next call tries again."""
        self._discovered = True
        path = self._ref.schema_path()
        if path is None:
            return
        try:
            answer = await self.send("GET", self.base_url + path, deadline=deadline, cap=_JSON_CAP)
        except (HandshakeTimeout, ConnectFailed):
            self._discovered = False
            raise
        except BackendError as exc:
            log.info("capabilities_not_refreshed", backend=self.name, error_kind=exc.kind, error=str(exc))
            return
        doc = answer.json(backend=self.name)
        version = doc.get("latest_version") if isinstance(doc, dict) and "latest_version" in doc else doc
        schema = parse_schema(version.get("openapi_schema") if isinstance(version, dict) else None,
                              source=f"discovered: {self._ref} input schema")
        if schema is not None:
            self._schema = schema

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send("GET", self.base_url + "/v1/account", deadline=deadline, cap=_JSON_CAP,
                                 timings=timings)
        doc = answer.json(backend=self.name)
        if not isinstance(doc, dict) or not doc.get("username"):
            raise BadResponse("/v1/account answer has no 'username'", backend=self.name)
        await self._discover(deadline)
        inputs = "schema read" if self._schema is not None and self._schema.source.startswith("discovered") \
            else "schema not read"
        return f"account {doc['username']} ({doc.get('type') or 'user'}); {self._ref}: {inputs}"
