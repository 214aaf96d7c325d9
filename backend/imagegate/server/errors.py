"""Every failure of the HTTP API as one OpenAI-shaped JSON answer.

    {"error": {"message": ..., "type": ..., "code": ..., "param": ...}}

``api_error_for(exc)`` is the one place an exception becomes a status code. Nothing here ever
returns a traceback, and every message passes through the ``Redactor``
(``imagegate.config.redact``) holding the configured secrets (provider keys, our own API
keys) in every form, so that a provider echoing a key cannot leak it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from imagegate.config.redact import Redactor
from imagegate.errors import AllBackendsFailed, ConfigError, InvalidRequest
from imagegate.server.jobstore import JobStoreUnavailable

__all__ = ["ApiError", "Redactor", "api_error_for"]

INVALID = "invalid_request_error"
API_ERROR = "api_error"
SERVER_ERROR = "server_error"

_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


class ApiError(Exception):
    """An answer in OpenAI's error shape; raise it from a handler or a middleware."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        return {"error": {**error, **self.extra}}

    def response(self) -> web.Response:
        return web.Response(
            status=self.status,
            text=json.dumps(self.body()),
            content_type="application/json",
            headers=self.headers,
        )


def api_error_for(exc: BaseException, redact: Redactor) -> ApiError:
    """The answer for ``exc``; unknown exceptions become a bare 500 (logged by the caller)."""
    if isinstance(exc, ApiError):
        exc.message = redact(exc.message) or ""
        return exc
    if isinstance(exc, InvalidRequest):
        return ApiError(
            400, redact(exc.message) or "invalid request", code="invalid_value", param=exc.field
        )
    if isinstance(exc, AllBackendsFailed):
        return _all_failed(exc, redact)
    if isinstance(exc, ConfigError):
        return ApiError(400, redact(str(exc)) or "", code="invalid_value")
    if isinstance(exc, web.HTTPException):
        return _http_exception(exc)
    if isinstance(exc, JobStoreUnavailable):
        return ApiError(503, f"{exc}; try again", type=API_ERROR, code="job_store_unavailable",
                        headers={"Retry-After": "1"})
    return ApiError(500, "internal server error", type=SERVER_ERROR, code="internal_error")


def _all_failed(exc: AllBackendsFailed, redact: Redactor) -> ApiError:
    attempts = [
        {
            "backend": a.backend,
            "outcome": a.outcome,
            "elapsed_s": round(a.elapsed_s, 4),
            "error": redact(a.error),
            "status": a.status,
        }
        for a in exc.attempts
    ]
    headers = {"x-imagegate-attempts": str(len(exc.attempts))}
    refused = _refused_by_every_backend(exc)
    if refused is not None:  # the request's fault, not the service's: no client retries it
        return ApiError(
            400,
            redact(f"every backend refused this request: {exc}") or "",
            code=refused,
            headers=headers,
            extra={"attempts": attempts},
        )
    if exc.deadline_exceeded:
        message = f"the deadline passed before any backend produced an image: {exc}"
        return ApiError(
            504,
            redact(message) or "",
            type=API_ERROR,
            code="deadline_exceeded",
            headers=headers,
            extra={"attempts": attempts},
        )
    return ApiError(
        502,
        redact(str(exc)) or "",
        type=API_ERROR,
        code="all_backends_failed",
        headers=headers,
        extra={"attempts": attempts},
    )


_NOT_TRIED = frozenset({"skipped", "waited", "cancelled", "raced"})


def _refused_by_every_backend(exc: AllBackendsFailed) -> str | None:
    """The error code when every backend that was asked refused the request itself (its
    parameters, or its content): a 400, which the OpenAI SDK does not retry, unlike a 502."""
    tried = {a.outcome for a in exc.attempts if a.outcome not in _NOT_TRIED}
    if exc.deadline_exceeded or not tried or not tried <= {"rejected", "content_filtered"}:
        return None
    return "content_policy_violation" if "content_filtered" in tried else "rejected_by_backend"


def _http_exception(exc: web.HTTPException) -> ApiError:
    status = exc.status
    headers = {}
    if "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    message = exc.reason
    if status == 413:
        message = exc.text or message
    code = _HTTP_CODES.get(status, f"http_{status}")
    return ApiError(
        status, message, type=INVALID if status < 500 else API_ERROR, code=code, headers=headers
    )
