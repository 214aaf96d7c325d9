"""The OpenAPI 3.1 document served at ``GET /openapi.json``.

Hand-written paths; the request and answer bodies come from the same pydantic models the
server validates with, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Any

from imagegate.models import BackendHealth
from imagegate.server.jobs import JobRecord
from imagegate.server.wire import GenerationBody, ImagesResponse

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_SSE = "text/event-stream"
# one Server-Sent Event (WHATWG HTML, "event stream interpretation"): its fields as received;
# ``data`` is a JSON document in every event imagegate sends
_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def _schema(model: Any) -> dict[str, Any]:
    return model.model_json_schema(ref_template=_REF)


def _json(ref: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        out["headers"] = headers
    return out


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description, {"x-request-id": _header("the request id")})


def _header(description: str, *, required: bool = True, kind: str = "string") -> dict[str, Any]:
    return {"description": description, "required": required, "schema": {"type": kind}}


def _param(name: str, where: str, description: str) -> dict[str, Any]:
    return {
        "name": name, "in": where, "required": True, "description": description,
        "schema": {"type": "string"},
    }


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
                "attempts": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
_AUTH_ERRORS = {"401": _error("missing or wrong API key (only when IMAGEGATE_API_KEY is set)")}


def _generations() -> dict[str, Any]:
    ok_headers = {
        "x-request-id": _header("the request id (echoed when the caller sent a safe one)"),
        # known only once the images are: on JSON answers, not on a stream (sent before them)
        "x-imagegate-backend": _header("the backend that produced the images (JSON answers)",
                                       required=False),
        "x-imagegate-attempts": _header("how many backend attempts were made (JSON answers)",
                                        required=False),
        "x-imagegate-ignored": _header(
            "body fields that were not understood and were ignored", required=False
        ),
        "x-imagegate-warning": _header("why the answer is not what was asked (e.g. images "
                                       "that could not be saved come as b64_json)", required=False),
    }
    accepted = _json("JobAccepted", "with Prefer: respond-async: the job, started", {
        "Location": _header("the job's URL"),
        "Preference-Applied": _header("respond-async"),
    })
    images = _json("ImagesResponse", "the images", ok_headers)
    images["content"][_SSE] = {"schema": _SSE_EVENT}
    images["description"] = 'the images; with "stream": true, OpenAI\'s image event stream'
    return {
        "post": {
            "operationId": "createImage",
            "summary": "Generate images (OpenAI-compatible; streamed; or as an async job)",
            "parameters": [{
                "name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
                "description": "respond-async: answer 202 with a job to follow (RFC 7240)",
            }],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ImageGenerationRequest"}
                    }
                },
            },
            "responses": {
                "200": images,
                "202": accepted,
                "400": _error(
                    "malformed JSON, a field failed validation (`param` names it), every "
                    "backend refused the request (`attempts` holds the trail), an invalid Host "
                    "header, or a body that does not decode"
                ),
                **_AUTH_ERRORS,
                "403": _error("a browser origin not in [service] cors_origins"),
                "408": _error("the body did not arrive within [service] body_timeout_s"),
                "413": _error("body larger than the limit (IMAGEGATE_MAX_BODY_BYTES)"),
                "415": _error("not application/json (required while no API key is set)"),
                "502": _error("every backend failed; the message and `attempts` hold the trail"),
                "503": _error("the server is shutting down, has too many connections, or too "
                              "many jobs run (jobs_full)"),
                "504": _error("the deadline passed before any backend answered"),
                "507": _error("a `url` answer cannot be saved (output_dir unwritable or full)"),
            },
        }
    }


def _job_paths() -> dict[str, Any]:
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    record = _json("JobRecord", "the job")
    missing = _error("no such job (or it expired)")
    events = {
        "description": "Server-Sent Events: id, event (queued, started, progress, preview, "
        "failover, completed, failed, cancelled) and JSON data; ends after the terminal one",
        "content": {_SSE: {"schema": _SSE_EVENT}},
    }
    return {
        "/v1/jobs/{job_id}": {"get": {
            "operationId": "getJob", "summary": "An async job's record", "parameters": job_id,
            "responses": {"200": record, **_AUTH_ERRORS, "404": missing}}},
        "/v1/jobs/{job_id}/events": {"get": {
            "operationId": "getJobEvents", "summary": "An async job's events (resume with "
            "Last-Event-ID)", "parameters": [*job_id, {
                "name": "Last-Event-ID", "in": "header", "required": False,
                "schema": {"type": "string"}, "description": "resume after this event id"}],
            "responses": {"200": events, "204": {"description": "nothing after Last-Event-ID"},
                          "400": _error("Last-Event-ID is not an event id"), **_AUTH_ERRORS,
                          "404": missing}}},
        "/v1/jobs/{job_id}/cancel": {"post": {
            "operationId": "cancelJob", "summary": "Cancel an async job", "parameters": job_id,
            "responses": {"200": _json("JobRecord", "the cancelled job"), **_AUTH_ERRORS,
                          "404": missing, "409": _error("the job already succeeded or failed"),
                          "504": _error("the job did not stop in time")}}},
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"operationId": operation_id, "summary": summary, "responses": responses}}


def _plain_schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties)}


def _paths() -> dict[str, Any]:
    status = _plain_schema({"status": {"type": "string"}})
    readiness = _plain_schema(
        {"status": {"type": "string"}, "usable_backends": {"type": "integer"}}
    )
    text = {"text/plain": {"schema": {"type": "string"}}}
    return {
        "/v1/images/generations": _generations(),
        **_job_paths(),
        "/v1/files/{day}/{name}": {
            "get": {
                "operationId": "getFile",
                "summary": "An image stored for a `url` answer, by its signed link (no header)",
                "parameters": [
                    _param("day", "path", "the day folder, YYYY-MM-DD"),
                    _param("name", "path", "the file name"),
                    _param("expires", "query", "when the link expires (Unix time)"),
                    _param("sig", "query", "the link's signature"),
                ],
                "responses": {
                    "200": {
                        "description": "the image bytes",
                        "content": {
                            f"image/{t}": {"schema": {"type": "string", "format": "binary"}}
                            for t in ("png", "jpeg", "webp")
                        },
                    },
                    "403": _error("the signature is missing, altered or not this server's"),
                    "404": _error("no such image (deleted by retention_days, or never stored)"),
                    "410": _error("the link has expired ([service] url_ttl_s)"),
                },
            }
        },
        "/v1/backends": _get(
            "listBackends",
            "The health table",
            {
                "200": _json("BackendList", "every backend, as the service knows it now"),
                **_AUTH_ERRORS,
            },
        ),
        "/v1/models": _get(
            "listModels",
            "Backend names and aliases usable as `model`",
            {
                "200": _json("ModelList", "backends and aliases"),
                **_AUTH_ERRORS,
            },
        ),
        "/healthz": _get(
            "liveness",
            "200 while the process serves",
            {
                "200": {
                    "description": "alive",
                    "content": {"application/json": {"schema": status}},
                },
            },
        ),
        "/readyz": _get(
            "readiness",
            "200 when at least one backend is usable",
            {
                "200": {
                    "description": "ready",
                    "content": {"application/json": {"schema": readiness}},
                },
                "503": {
                    "description": "no usable backend, or shutting down",
                    "content": {"application/json": {"schema": readiness}},
                },
            },
        ),
        "/metrics": _get(
            "metrics",
            "Prometheus text format",
            {
                "200": {"description": "metrics", "content": text},
                **_AUTH_ERRORS,
            },
        ),
    }


def _components() -> dict[str, Any]:
    request = _schema(GenerationBody)
    response = _schema(ImagesResponse)
    job = _schema(JobRecord)
    schemas: dict[str, Any] = {**response.pop("$defs", {}), **job.pop("$defs", {})}
    schemas.update(
        ImageGenerationRequest=request,
        ImagesResponse=response,
        JobRecord=job,
        JobAccepted=_plain_schema({
            "id": {"type": "string"}, "object": {"type": "string"}, "status": {"type": "string"},
            "created_at": {"type": "number"},
            "urls": _plain_schema({k: {"type": "string"} for k in ("get", "events", "cancel")}),
        }),
        Error=_ERROR_SCHEMA,
        BackendHealth=_schema(BackendHealth),
        BackendList=_plain_schema(
            {
                "object": {"type": "string"},
                "ready": {"type": "boolean"},
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/BackendHealth"}},
            }
        ),
        ModelList=_plain_schema(
            {
                "object": {"type": "string"},
                "data": {
                    "type": "array",
                    "items": _plain_schema(
                        {
                            "id": {"type": "string"},
                            "object": {"type": "string"},
                            "created": {"type": "integer"},
                            "owned_by": {"type": "string"},
                        }
                    ),
                },
            }
        ),
    )
    return {
        "schemas": schemas,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
    }


def openapi_document(*, version: str, server_url: str | None = None) -> dict[str, Any]:
    """The whole document; ``server_url`` goes into ``servers`` when given."""
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "imagegate",
            "version": version,
            "description": "OpenAI-compatible image generation in front of several providers, "
            "with health checks and failover. Validation errors are 400 (as OpenAI answers).",
        },
        "paths": _paths(),
        "components": _components(),
    }
    for path, item in doc["paths"].items():
        if path.startswith("/v1/") and not path.startswith("/v1/files/"):  # links are signed
            for operation in item.values():
                operation["security"] = [{"bearerAuth": []}]
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
