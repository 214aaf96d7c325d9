"""The typed settings: ``[service]``, the fields every ``[[backend]]`` shares, and the whole.

Each provider kind's own settings class subclasses :class:`BackendSettings` (or
:class:`HttpBackendSettings`) in its backend module, and the provider registry
(``imagegate.backends.registry``) lists them; nothing here knows the kinds.

Secrets are never fields: a backend names environment variables (``api_key_env``,
``token_env``, ...) through :meth:`BackendSettings.secret_env_names` and the values are
looked up once, when the settings are loaded.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from imagegate.errors import ConfigError

__all__ = [
    "SERVICE_SECRETS",
    "BackendSettings",
    "HttpBackendSettings",
    "ServiceSettings",
    "Settings",
    "Timeouts",
    "check_pem",
    "check_url",
    "url_from_env",
]


SERVICE_SECRETS = "[service]"
"""The key of ``Settings.secrets`` holding the service's own secrets (``webhook_secret``); no
backend can have this name."""

RACE_AFTER_MAX_S = 600.0  # the longest connect_timeout_s: racing later never happens

_HOST_PATTERN = re.compile(r"(\*\.)?([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


class Timeouts(BaseModel):
    """Per-backend time budgets in seconds; converted to a client library's type in one place."""

    model_config = ConfigDict(frozen=True)

    connect: float = Field(gt=0)
    read: float = Field(gt=0)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_url(value: str | None) -> str | None:
    """An http(s) URL with a host, without a trailing slash; ValueError otherwise."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
    return value.rstrip("/")


def url_from_env(env: Mapping[str, str], var: str) -> str:
    """The URL in environment variable ``var``; ConfigError naming the variable otherwise."""
    try:
        return check_url(env[var].strip()) or ""
    except ValueError as exc:
        raise ConfigError(f"environment variable {var}: {exc}") from None


def check_pem(path: Path, what: str) -> None:
    """ConfigError naming ``what`` unless ``path`` is a readable file of PEM certificates."""
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        raise ConfigError(f"{what}: {path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{what}: {path}: is a directory, not a PEM file") from None
    except (ssl.SSLError, ValueError):  # SSLError is an OSError: first
        raise ConfigError(f"{what}: {path}: not a PEM certificate file") from None
    except OSError as exc:
        raise ConfigError(f"{what}: {path}: cannot read: {exc.strerror or exc}") from None


class BackendSettings(_Frozen):
    """What every ``[[backend]]`` table has, whatever its kind."""

    kind: str
    # one "/" at most: a short form names its backends "<name>/<part>" (hf_inference providers)
    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$"
    )
    enabled: bool = True
    priority: int = 0
    connect_timeout_s: float = Field(default=10.0, gt=0, le=600)
    read_timeout_s: float = Field(default=120.0, gt=0, le=3600)
    model: str | None = None
    ca_bundle: Path | None = None
    max_concurrency: int = Field(default=8, ge=1, le=1024)
    queue: bool = False
    cost: float = Field(default=0.0, ge=0)
    max_image_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # image URLs a provider hands us may point at these hosts even on a private address
    # ("host", "host:port", "*.example.com"); the backend's own origin always may
    download_hosts: tuple[str, ...] = ()

    @field_validator("download_hosts")
    @classmethod
    def _host_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            if not _HOST_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not a host pattern: write host, host:port or *.example.com"
                )
        return value

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(connect=self.connect_timeout_s, read=self.read_timeout_s)

    @property
    def endpoint(self) -> str:
        """The URL whose DNS, TCP and TLS ``imagegate diagnose`` checks."""
        raise NotImplementedError

    def expand(self) -> tuple[BackendSettings, ...]:
        """The backends this table stands for: itself, or several for a kind with a short
        form (hf_inference's ``providers``); config loading calls it for every table."""
        return (self,)

    def with_files_from(self, folder: Path | None) -> BackendSettings:
        """This table with the files it names (besides ``ca_bundle``) resolved against the
        config file's ``folder`` (None: no file, the working directory) and read; ConfigError
        naming the key when one cannot be used. Most kinds name none."""
        return self

    def secret_env_names(self) -> dict[str, str]:
        """Environment variables this backend reads secrets from: {purpose: VAR}."""
        return {}

    def required_secrets(self) -> tuple[str, ...]:
        """Purposes from secret_env_names() whose variable must be set."""
        return ()


class HttpBackendSettings(BackendSettings):
    """A backend reached at one HTTP(S) ``base_url``."""

    base_url: str

    _url = field_validator("base_url")(classmethod(lambda cls, v: check_url(v)))

    @property
    def endpoint(self) -> str:
        return self.base_url


class ServiceSettings(_Frozen):
    """The ``[service]`` table: how the router behaves for every request."""

    deadline_s: float = Field(default=120.0, gt=0, le=3600)
    output_dir: Path = Path("outputs")
    max_attempts: int = Field(default=3, ge=1, le=20)
    order: Literal["priority", "latency", "round_robin"] = "priority"
    hedge_after_s: float | None = Field(default=None, gt=0)
    hedge: Literal["off", "p95"] = "off"
    hedge_budget: float = Field(default=0.1, ge=0, le=1)
    hedge_max_cost: float | None = Field(default=None, ge=0)
    probe_interval_s: float = Field(default=30.0, gt=0)
    probe_timeout_s: float = Field(default=5.0, gt=0)
    breaker_threshold: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)
    breaker_max_cooldown_s: float = Field(default=300.0, gt=0)
    retry_backoff_s: float = Field(default=0.05, ge=0)
    max_retry_after_s: float = Field(default=2.0, ge=0)
    # How long one request may wait, in all, for a skipped backend whose breaker reopens
    # before its deadline (0: never wait; fail over to what is open, then give up).
    max_wait_s: float = Field(default=10.0, ge=0)
    # Handshake racing (routing/race.py): a chosen backend not connected after this long has
    # the next candidate connect too, and the first one ready gets the request. "auto": a
    # high percentile of that backend's recent handshakes (0.5 s until it has enough); a
    # number of seconds; 0 or false: off.
    race_after_s: float | Literal["auto"] = "auto"

    @field_validator("race_after_s", mode="before")
    @classmethod
    def _race_after(cls, value: object) -> object:
        if value is False:
            return 0.0  # false: off
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if value == "auto" or number and 0 <= value <= RACE_AFTER_MAX_S:  # type: ignore[operator]
            return value
        raise ValueError(
            f'must be "auto", seconds from 0 (off) to {RACE_AFTER_MAX_S:g}, or false (got {value!r})'
        )
    # HTTP API: OpenAI ``model`` names -> a backend name, or "*" for any backend
    aliases: dict[str, str] = Field(default_factory=dict)
    # Shared state for several instances (breakers, slots, hedge budget, jobs): a Redis URL
    # (redis:// or rediss://; also $IMAGEGATE_STATE_URL). Its password comes from the variable
    # named by state_password_env, never from this file. None: in-process state.
    state_url: str | None = None
    state_password_env: str = "IMAGEGATE_STATE_PASSWORD"
    state_timeout_s: float = Field(default=0.25, gt=0, le=10)
    state_ca_bundle: Path | None = None

    @field_validator("state_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL (got {parts.scheme}://...)")
        if parts.password:
            raise ValueError(
                "holds a password: put it in the environment variable named by "
                "state_password_env (IMAGEGATE_STATE_PASSWORD), not in the URL"
            )
        return value
    # HTTP API: a ``model`` that names no backend or alias is routed as usual, or refused (400)
    unknown_model: Literal["route", "reject"] = "route"
    # HTTP API: refuse body fields we do not know (default: ignore them, listed in a header)
    strict_fields: bool = False
    # HTTP API: how long a signed ``url`` answer stays valid, in seconds
    url_ttl_s: int = Field(default=3600, ge=1, le=366 * 86400)
    # ``serve``: delete images older than this many days from output_dir (none: keep them)
    retention_days: float | None = Field(default=None, gt=0)
    # A request a backend cannot serve as asked: "nearest" fits it (size snapped, steps and
    # guidance clamped, ...; every change reported), "strict" skips that backend instead.
    adapt: Literal["nearest", "strict"] = "nearest"
    # HTTP API async jobs (``Prefer: respond-async``): kept in memory, at most this many, each
    # for this long after it ended
    jobs_max: int = Field(default=1000, ge=1)
    jobs_ttl_s: float = Field(default=3600.0, gt=0)
    # with state_url: an instance that stops renewing its lease on a job this long is taken
    # for dead, and another instance runs the job again
    jobs_lease_s: float = Field(default=10.0, gt=0, le=600)
    # Job webhooks: the variable holding the HMAC-SHA256 key, the hosts a webhook_url may
    # name (none: webhooks are off), and the base of the backoff between delivery attempts
    webhook_secret_env: str | None = None
    webhook_hosts: list[str] = Field(default_factory=list)
    webhook_backoff_s: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> ServiceSettings:
        if self.webhook_hosts and not self.webhook_secret_env:
            raise ValueError(
                "webhook_hosts needs webhook_secret_env: every webhook is signed (HMAC-SHA256)"
            )
        return self
    # HTTP API, what a hostile client meets (imagegate.server.limits, guards, storage):
    # the base of ``url`` answers (else the request's validated Host)
    public_url: str | None = None
    # browser origins allowed to call the API (CORS); empty: no cross-origin browser calls
    cors_origins: tuple[str, ...] = ()
    header_timeout_s: float = Field(default=10.0, gt=0, le=600)  # a request's head must arrive
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)  # its whole body must arrive
    keepalive_timeout_s: float = Field(default=15.0, gt=0, le=3600)  # idle between requests
    max_connections: int = Field(default=512, ge=1, le=100_000)  # more are refused with a 503
    min_free_mb: float = Field(default=100.0, ge=0)  # free space output_dir keeps for `url`
    # ``serve``: the operator page at /ui and its data routes under /v1/ui/ (false: none)
    ui: bool = True

    _public = field_validator("public_url")(classmethod(lambda cls, v: check_url(v)))

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            if origin != "*" and (check_url(origin) != origin or urlsplit(origin).path):
                raise ValueError(
                    f"{origin!r} is not an origin: write scheme://host[:port] (no path), or \"*\""
                )
        return value


class Settings(_Frozen):
    """Everything the service needs, resolved: service table, backends, and their secrets."""

    service: ServiceSettings = ServiceSettings()
    backends: tuple[SerializeAsAny[BackendSettings], ...] = ()
    secrets: dict[str, dict[str, str]] = Field(default_factory=dict, repr=False)
    source: str = "environment"
    # backends left out because a variable they need is not set: name -> why (one line)
    disabled: dict[str, str] = Field(default_factory=dict)

    def secret(self, backend: str, purpose: str) -> str | None:
        return self.secrets.get(backend, {}).get(purpose)

    def backend(self, name: str) -> BackendSettings:
        for b in self.backends:
            if b.name == name:
                return b
        raise ConfigError(f"no backend named {name!r} (configured: {self.names()})")

    def names(self) -> str:
        return ", ".join(b.name for b in self.backends) or "none"
