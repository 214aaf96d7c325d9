"""What ``imagegate diagnose`` found: steps, per-backend reports, the verdict, and the JSON
document (schema below; ``schema_version`` changes only when a key is removed or changes
meaning, never when one is added).

JSON schema, version 1 — one document::

    {
      "schema_version": 1,
      "imagegate_version": "0.1.0",
      "started_at": "2026-01-01T12:00:00Z",     # UTC, ISO 8601
      "elapsed_s": 1.02,                        # wall time of the whole run
      "timeout_s": 10.0,                        # the per-step timeout (--timeout)
      "generate": false,                        # whether --generate ran
      "config_source": "imagegate.toml",        # the file, or "environment"
      "summary": {"ok": 1, "degraded": 0, "down": 2},
      "exit_code": 0,                           # 0: at least one backend ok; 1: none
      "backends": [
        {
          "name": "novita", "kind": "novita",
          "target": "https://api.novita.ai",     # base_url, src or the Space id; never userinfo
          "verdict": "ok" | "degraded" | "down",
          "elapsed_s": 0.41,
          "credentials": [{"purpose": "api_key", "env": "NOVITA_API_KEY",
                           "present": true, "last4": "9f2c" | null}],
          "steps": [
            {"name": "dns" | "tcp" | "tls" | "http" | "auth" | "runtime" | "gradio_api"
                     | "params" | "generate",
             "status": "ok" | "warn" | "fail" | "skip",
             "elapsed_s": 0.012 | null,          # null: skipped, or no request of its own
             "detail": "one line for people",
             "code": "tls_timeout" | null,       # the problem found: a key of advice.ADVICE
             "data": {...}}                      # step facts, see STEP_DATA_KEYS
          ],
          "advice": [{"code": "tls_timeout", "step": "tls",
                      "problem": "...", "advice": "..."}]
        }
      ]
    }

A config error prints ``{"schema_version": 1, "error": {"kind": "config_error",
"message": "..."}, "backends": []}`` and exits 2.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from imagegate.config.redact import Redactor
from imagegate.diagnose.advice import ADVICE, SYMPTOMS, advice_text
from imagegate.version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "STEP_DATA_KEYS",
    "STEP_NAMES",
    "BackendReport",
    "Report",
    "Step",
    "StepLog",
    "scrub",
]

SCHEMA_VERSION = 1
StepStatus = Literal["ok", "warn", "fail", "skip"]
Verdict = Literal["ok", "degraded", "down"]
STEP_NAMES = ("dns", "tcp", "tls", "http", "auth", "runtime", "gradio_api", "params", "generate")

# The keys each step's "data" may hold (documentation; a key is absent when unknown).
STEP_DATA_KEYS: dict[str, tuple[str, ...]] = {
    "dns": ("host", "addresses", "special_use", "error"),
    "tcp": ("host", "port", "address", "error"),
    "tls": ("host", "protocol", "cipher", "subject", "issuer", "not_after", "days_left",
            "verified", "error"),
    "http": ("method", "url", "status", "first_byte_s", "detail", "error_kind", "error"),
    "auth": ("env", "present", "last4", "result"),
    "runtime": ("space", "stage", "hardware", "requested_hardware", "status"),
    "gradio_api": ("url", "gradio_version", "api_prefix", "endpoints", "status", "error"),
    "params": ("api_name", "params", "required", "problems", "inputs"),
    "generate": ("width", "height", "format", "bytes", "seconds", "error_kind", "error"),
}


@dataclass
class Step:
    """One timed check of one backend."""

    name: str
    status: StepStatus
    elapsed_s: float | None = None
    detail: str = ""
    code: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 4),
            "detail": self.detail,
            "code": self.code,
            "data": self.data,
        }


class StepLog:
    """The steps of one backend, in order; a failed step makes the later ones skip."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, step: Step) -> bool:
        """Record ``step``; True when later steps may run."""
        self.steps.append(step)
        return step.status in ("ok", "warn") or (step.status == "skip" and step.code is None)

    def skip(self, names: Iterable[str], reason: str) -> None:
        for name in names:
            self.steps.append(Step(name, "skip", detail=f"skipped: {reason}"))


@dataclass
class BackendReport:
    """Everything diagnose found about one backend."""

    name: str
    kind: str
    target: str
    steps: list[Step]
    credentials: list[dict[str, Any]]
    facts: dict[str, Any]
    elapsed_s: float = 0.0

    @property
    def verdict(self) -> Verdict:
        statuses = {s.status for s in self.steps}
        if "fail" in statuses:
            return "down"
        return "degraded" if "warn" in statuses else "ok"

    def advice(self) -> list[dict[str, str]]:
        out = []
        for step in self.steps:
            if step.code and step.code in ADVICE:
                facts = {**self.facts, **step.data}
                out.append(
                    {
                        "code": step.code,
                        "step": step.name,
                        "problem": advice_text(SYMPTOMS[step.code], facts),
                        "advice": advice_text(ADVICE[step.code], facts),
                    }
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "verdict": self.verdict,
            "elapsed_s": round(self.elapsed_s, 4),
            "credentials": self.credentials,
            "steps": [s.to_json() for s in self.steps],
            "advice": self.advice(),
        }


@dataclass
class Report:
    """One diagnose run over several backends."""

    backends: list[BackendReport]
    timeout_s: float
    generate: bool
    config_source: str
    started_at: dt.datetime
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        return 0 if any(b.verdict == "ok" for b in self.backends) else 1

    def summary(self) -> dict[str, int]:
        counts = {"ok": 0, "degraded": 0, "down": 0}
        for b in self.backends:
            counts[b.verdict] += 1
        return counts

    def to_json(self, *, secrets: Iterable[str] | Redactor = ()) -> dict[str, Any]:
        doc = {
            "schema_version": SCHEMA_VERSION,
            "imagegate_version": __version__,
            "started_at": self.started_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "elapsed_s": round(self.elapsed_s, 4),
            "timeout_s": self.timeout_s,
            "generate": self.generate,
            "config_source": self.config_source,
            "summary": self.summary(),
            "exit_code": self.exit_code,
            "backends": [b.to_json() for b in self.backends],
        }
        return scrub(doc, secrets)


def scrub(value: Any, secrets: Iterable[str] | Redactor) -> Any:
    """``value`` (a text or a JSON document) with every secret masked in every form a server
    may echo it (defence in depth: backends and the router mask already, but a provider may
    echo a key anywhere). ``secrets``: a Redactor, or the secret values themselves."""
    redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)
    return redactor.value(value)
