"""Settings: an optional TOML file plus the environment (and ``.env``) for secrets.

Built once at the entry point and passed down explicitly. Secrets are never read from the
TOML file: a backend names an environment variable (``api_key_env``, ``token_env``,
``username_env``...) and the value is looked up when the service starts.

With no file at all, backends come from the environment alone:
``A1111_URL``, ``NOVITA_API_KEY``, ``STABILITY_API_KEY``, ``HF_TOKEN`` (HF Inference),
``OPENAI_BASE_URL`` (+ ``OPENAI_API_KEY``) and ``HF_SPACES="owner/a,owner/b"``; with none of
them, the built-in public Spaces serve as the zero-key default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from imagegate.errors import ConfigError

__all__ = [
    "A1111Settings",
    "BackendSettings",
    "HFInferenceSettings",
    "HFSpaceSettings",
    "NovitaSettings",
    "OpenAISettings",
    "ServiceSettings",
    "Settings",
    "StabilitySettings",
    "Timeouts",
    "load_settings",
]

CONFIG_ENV = "IMAGEGATE_CONFIG"


class Timeouts(BaseModel):
    """Per-backend time budgets in seconds; converted to a client library's type in one place."""

    model_config = ConfigDict(frozen=True)

    connect: float = Field(gt=0)
    read: float = Field(gt=0)


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
    return value.rstrip("/")


class _BackendBase(_Base):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
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

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(connect=self.connect_timeout_s, read=self.read_timeout_s)

    def secret_env_names(self) -> dict[str, str]:
        """Environment variables this backend reads secrets from: {purpose: VAR}."""
        return {}

    def required_secrets(self) -> tuple[str, ...]:
        """Purposes from secret_env_names() whose variable must be set."""
        return ()


class _HttpBackendBase(_BackendBase):
    base_url: str

    _url = field_validator("base_url")(classmethod(lambda cls, v: _check_url(v)))


class A1111Settings(_HttpBackendBase):
    """A local AUTOMATIC1111 webui started with ``--api``."""

    kind: Literal["a1111"] = "a1111"
    base_url: str = "http://127.0.0.1:7860"
    connect_timeout_s: float = Field(default=5.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=1, ge=1, le=1024)
    queue: bool = True
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


class NovitaSettings(_HttpBackendBase):
    """Novita AI's async txt2img API."""

    kind: Literal["novita"] = "novita"
    base_url: str = "https://api.novita.ai"
    model: str | None = "sd_xl_base_1.0.safetensors"
    api_key_env: str = "NOVITA_API_KEY"
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    read_timeout_s: float = Field(default=180.0, gt=0, le=3600)

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


class StabilitySettings(_HttpBackendBase):
    """Stability AI's v2beta Stable Image API."""

    kind: Literal["stability"] = "stability"
    base_url: str = "https://api.stability.ai"
    engine: Literal["core", "ultra", "sd3"] = "core"
    api_key_env: str = "STABILITY_API_KEY"

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


class HFInferenceSettings(_HttpBackendBase):
    """Hugging Face Inference through the router (hf-inference provider)."""

    kind: Literal["hf_inference"] = "hf_inference"
    base_url: str = "https://router.huggingface.co"
    model: str | None = "black-forest-labs/FLUX.1-schnell"
    api_key_env: str = "HF_TOKEN"
    whoami_url: str | None = None

    _whoami = field_validator("whoami_url")(classmethod(lambda cls, v: _check_url(v)))

    @field_validator("base_url")
    @classmethod
    def _not_retired_host(cls, value: str) -> str:
        if urlsplit(value).hostname == "api-inference.huggingface.co":
            raise ValueError(
                "api-inference.huggingface.co is retired (it answers 410 Gone); "
                "use https://router.huggingface.co"
            )
        return value

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",)


class OpenAISettings(_HttpBackendBase):
    """Any server that speaks the OpenAI images API (aggregators, another imagegate)."""

    kind: Literal["openai"] = "openai"
    api_key_env: str | None = "OPENAI_API_KEY"
    api_key_required: bool = True
    # send seed/negative_prompt/steps/guidance_scale/output_format when set (imagegate's own
    # server reads them); strict api.openai.com rejects unknown fields: set false there
    send_extensions: bool = True

    def secret_env_names(self) -> dict[str, str]:
        return {"api_key": self.api_key_env} if self.api_key_env else {}

    def required_secrets(self) -> tuple[str, ...]:
        return ("api_key",) if self.api_key_env and self.api_key_required else ()


# ImageRequest fields a Space's parameters can be mapped from (HFSpaceSettings.inputs keys).
SPACE_INPUT_FIELDS = (
    "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "sampler", "model",
)


class HFSpaceSettings(_BackendBase):
    """A Hugging Face Space (or any Gradio app) reached through gradio_client."""

    kind: Literal["hf_space"] = "hf_space"
    space: str | None = Field(default=None, pattern=r"^[\w.\-]+/[\w.\-]+$")
    src: str | None = None
    hub_url: str = "https://huggingface.co"
    api_name: str | None = None
    inputs: dict[str, str] = Field(default_factory=lambda: {"prompt": "prompt"})
    fixed: dict[str, Any] = Field(default_factory=dict)
    token_env: str = "HF_TOKEN"
    connect_timeout_s: float = Field(default=30.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=2, ge=1, le=64)
    wake_up: bool = False

    _src = field_validator("src", "hub_url")(classmethod(lambda cls, v: _check_url(v)))

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SPACE_INPUT_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown request field {unknown[0]!r} (known: {', '.join(SPACE_INPUT_FIELDS)})"
            )
        if "prompt" not in value:
            raise ValueError("must map 'prompt' to the Space's prompt parameter")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.space is None and self.src is None:
            raise ValueError(
                "set 'space' (owner/name) or 'src' (a URL), or both: 'src' then serves the "
                "Gradio calls and 'space' the Hub runtime check"
            )
        clash = sorted(set(self.inputs.values()) & set(self.fixed))
        if clash:
            raise ValueError(f"parameter {clash[0]!r} is set by both 'inputs' and 'fixed'")

    def secret_env_names(self) -> dict[str, str]:
        return {"token": self.token_env}


BackendSettings = Annotated[
    A1111Settings | NovitaSettings | StabilitySettings | HFInferenceSettings | OpenAISettings | HFSpaceSettings,
    Field(discriminator="kind"),
]
_BACKEND_ADAPTER: TypeAdapter[Any] = TypeAdapter(BackendSettings)
KINDS = ("a1111", "novita", "stability", "hf_inference", "hf_space", "openai")


class ServiceSettings(_Base):
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
    # HTTP API: OpenAI ``model`` names -> a backend name, or "*" for any backend
    aliases: dict[str, str] = Field(default_factory=dict)


class Settings(_Base):
    """Everything the service needs, resolved: service table, backends, and their secrets."""

    service: ServiceSettings = ServiceSettings()
    backends: tuple[Any, ...] = ()
    secrets: dict[str, dict[str, str]] = Field(default_factory=dict, repr=False)
    source: str = "environment"

    def secret(self, backend: str, purpose: str) -> str | None:
        return self.secrets.get(backend, {}).get(purpose)

    def backend(self, name: str) -> Any:
        for b in self.backends:
            if b.name == name:
                return b
        raise ConfigError(f"no backend named {name!r} (configured: {self.names()})")

    def names(self) -> str:
        return ", ".join(b.name for b in self.backends) or "none"


def load_settings(
    path: str | Path | None = None,
    *,
    environ: dict[str, str] | None = None,
    dotenv: bool = True,
    require_secrets: bool = True,
) -> Settings:
    """Read the TOML file (``path``, else ``$IMAGEGATE_CONFIG``, else none) and the environment.

    ``require_secrets=False`` (``imagegate diagnose``) lets a backend whose required variable is
    unset load anyway, without that secret, so that it can be reported as absent.

    Raises ConfigError with one message naming the file, the table and the key.
    """
    env = _environment(environ, dotenv)
    path = path or env.get(CONFIG_ENV) or None
    if path is not None:
        source = str(path)
        doc = _read_toml(Path(path))
        service = _validate_service(doc.pop("service", {}), source)
        raw_backends = doc.pop("backend", [])
        if doc:
            raise ConfigError(f"{source}: unknown table or key {min(doc)!r}")
        if not isinstance(raw_backends, list):
            raise ConfigError(f"{source}: 'backend' must be an array of tables: [[backend]]")
        backends = [_validate_backend(raw, i, source) for i, raw in enumerate(raw_backends)]
    else:
        source = "environment"
        service = ServiceSettings()
        backends = [_validate_backend(raw, i, source) for i, raw in enumerate(_from_env(env))]
    _check_unique(backends, source)
    backends = [b for b in backends if b.enabled]
    secrets = _resolve_secrets(backends, env, source, require=require_secrets)
    backends.sort(key=lambda b: b.priority)
    return Settings(service=service, backends=tuple(backends), secrets=secrets, source=source)


def _environment(environ: dict[str, str] | None, dotenv: bool) -> dict[str, str]:
    if environ is not None:
        return dict(environ)
    env = dict(os.environ)
    if dotenv:
        from dotenv import dotenv_values

        try:
            values = dotenv_values(".env")
        except UnicodeDecodeError as exc:
            raise ConfigError(f".env: {_not_utf8(exc)}") from None
        for key, value in values.items():
            if value is not None:
                env.setdefault(key, value)
    return env


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {_not_utf8(exc)}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (4300)
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"the file is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


def _errors_text(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p not in KINDS) or "(table)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        msg = msg.removeprefix("Value error, ")
        parts.append(f"key {loc!r}: {msg}")
    return "; ".join(parts)


def _validate_service(raw: Any, source: str) -> ServiceSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [service] must be a table")
    try:
        return ServiceSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: [service]: {_errors_text(exc)}") from None


def _validate_backend(raw: Any, index: int, source: str) -> Any:
    where = f"{source}: [[backend]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    if "name" in raw:
        where += f" (name = {raw['name']!r})"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}: key 'kind': must be one of {', '.join(KINDS)} (got {kind!r})")
    secretish = [k for k in raw if k in ("api_key", "token", "password", "hf_token", "key")]
    if secretish:
        raise ConfigError(
            f"{where}: key {secretish[0]!r}: secrets are never read from the config file; "
            "put the value in the environment or .env and name the variable with *_env"
        )
    try:
        return _BACKEND_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_errors_text(exc)}") from None


def _check_unique(backends: list[Any], source: str) -> None:
    seen: dict[str, int] = {}
    for i, b in enumerate(backends):
        if b.name in seen:
            raise ConfigError(
                f"{source}: [[backend]] #{i + 1}: key 'name': {b.name!r} is already used by "
                f"[[backend]] #{seen[b.name] + 1}; names must be unique"
            )
        seen[b.name] = i


def _resolve_secrets(
    backends: list[Any], env: dict[str, str], source: str, *, require: bool = True
) -> dict[str, dict[str, str]]:
    secrets: dict[str, dict[str, str]] = {}
    for b in backends:
        found: dict[str, str] = {}
        for purpose, var in b.secret_env_names().items():
            value = env.get(var, "").strip()
            if value:
                found[purpose] = value
            elif require and purpose in b.required_secrets():
                raise ConfigError(
                    f"{source}: [[backend]] {b.name!r} ({b.kind}): key '{purpose}_env': "
                    f"the environment variable {var} is not set (set it, or put it in .env)"
                )
        secrets[b.name] = found
    return secrets


def _from_env(env: dict[str, str]) -> list[dict[str, Any]]:
    """Backends configured by environment variables alone (no TOML file)."""
    from imagegate.spaces import space_backend_tables

    tables: list[dict[str, Any]] = []
    if env.get("A1111_URL"):
        tables.append({"name": "a1111", "kind": "a1111", "base_url": env["A1111_URL"]})
    if env.get("NOVITA_API_KEY"):
        tables.append({"name": "novita", "kind": "novita", "priority": 10})
    if env.get("STABILITY_API_KEY"):
        tables.append({"name": "stability", "kind": "stability", "priority": 20})
    if env.get("HF_TOKEN"):
        tables.append({"name": "hf-inference", "kind": "hf_inference", "priority": 30})
    if env.get("OPENAI_BASE_URL"):
        tables.append(
            {
                "name": "openai",
                "kind": "openai",
                "base_url": env["OPENAI_BASE_URL"],
                "priority": 40,
                "api_key_required": False,
            }
        )
    tables.extend(space_backend_tables(env.get("HF_SPACES"), have_others=bool(tables)))
    return tables
