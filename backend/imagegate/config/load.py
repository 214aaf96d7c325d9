"""Settings from an optional TOML file plus the environment (and ``.env``) for secrets.

Built once at the entry point and passed down explicitly. The kinds of backend are not known
here: the caller hands over a :class:`KindTable` (the provider registry,
``imagegate.backends.registry``, whose ``load_settings`` is what everyone calls).

With no file at all, backends come from the environment alone (``A1111_URL``,
``NOVITA_API_KEY``, ...: each kind says which variables configure it); with none of them,
the built-in public Spaces serve as the zero-key default (and a warning says so).

A backend whose key variable is not set is left out with a one-line warning
(``Settings.disabled`` says why) while the others serve; loading fails only when that leaves
no backend at all. A relative ``ca_bundle`` is relative to the config file's folder; it and
``SSL_CERT_FILE`` must be PEM files, checked here, so that no TLS set-up fails later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from imagegate.config.settings import (
    SERVICE_SECRETS,
    BackendSettings,
    ServiceSettings,
    Settings,
    check_pem,
)
from imagegate.config.sources import environment, errors_text, read_toml
from imagegate.errors import ConfigError
from imagegate.logging import get_logger

__all__ = ["CONFIG_ENV", "STATE_URL_ENV", "KindTable", "read_settings"]

CONFIG_ENV = "IMAGEGATE_CONFIG"
STATE_URL_ENV = "IMAGEGATE_STATE_URL"
_SECRETISH = ("api_key", "token", "password", "hf_token", "key")

log = get_logger(__name__)


class KindTable(Protocol):
    """What loading needs to know of the provider kinds."""

    @property
    def kinds(self) -> Sequence[str]: ...

    @property
    def env_variables(self) -> Sequence[str]:
        """The variables that configure a backend with no file (for the no-config notice)."""
        ...

    def settings_class(self, kind: str) -> type[BackendSettings]: ...

    def tables_from_env(self, env: Mapping[str, str]) -> list[dict[str, Any]]: ...


def read_settings(
    path: str | Path | None,
    *,
    kinds: KindTable,
    environ: dict[str, str] | None = None,
    dotenv: bool = True,
    require_secrets: bool = True,
) -> Settings:
    """Read the TOML file (``path``, else ``$IMAGEGATE_CONFIG``, else none) and the environment.

    ``require_secrets=False`` (``imagegate diagnose``) keeps a backend whose required variable
    is unset, without that secret, so that it can be reported as absent.

    Raises ConfigError with one message naming the file, the table and the key (or the
    variable).
    """
    env = environment(environ, dotenv=dotenv)
    path = path or env.get(CONFIG_ENV) or None
    _check_cert_file(env)
    if path is not None:
        source = str(path)
        doc = read_toml(Path(path))
        service = _validate_service(doc.pop("service", {}), source)
        raw_backends = doc.pop("backend", [])
        if doc:
            raise ConfigError(f"{source}: unknown table or key {min(doc)!r}")
        if not isinstance(raw_backends, list):
            raise ConfigError(f"{source}: 'backend' must be an array of tables: [[backend]]")
    else:
        source = "environment"
        service = ServiceSettings()
        raw_backends = kinds.tables_from_env(env)
        if not any(env.get(var, "").strip() for var in kinds.env_variables):
            log.warning("no_config_found", message=_no_config_notice(kinds))
    service = _service_from_env(service, env, source)
    tables = [
        (i, b)
        for i, raw in enumerate(raw_backends)
        for b in _expanded(_validate_backend(raw, i, source, kinds), i, source)
    ]
    _check_unique(tables, source)
    backends = [b for _, b in tables]
    backends = [_with_files(_with_ca_bundle(b, path, source), path, source) for b in backends if b.enabled]
    secrets, disabled = _resolve_secrets(backends, env, source, require=require_secrets)
    where = "" if path is None else f"{source}: "
    for name, why in disabled.items():
        log.warning("backend_disabled", backend=name, message=where + why)
    if disabled and len(disabled) == len(backends):
        raise ConfigError(f"{source}: no backend is usable: " + "; ".join(disabled.values()))
    backends = sorted((b for b in backends if b.name not in disabled), key=lambda b: b.priority)
    secrets.update(_service_secrets(service, env, source, require=require_secrets))
    if service.state_url and env.get(service.state_password_env, "").strip():
        secrets.setdefault(SERVICE_SECRETS, {})["state_password"] = env[service.state_password_env].strip()
    return Settings(
        service=service, backends=tuple(backends), secrets=secrets, source=source, disabled=disabled
    )


def _no_config_notice(kinds: KindTable) -> str:
    variables = ", ".join(kinds.env_variables)
    return (
        f"no config found: using the public Hugging Face Spaces (set one of {variables}, "
        f"or give a config file with --config PATH or {CONFIG_ENV})"
    )


def _check_cert_file(env: Mapping[str, str]) -> None:
    bundle = env.get("SSL_CERT_FILE", "").strip()
    if bundle:
        check_pem(Path(bundle), "environment variable SSL_CERT_FILE")


def _with_ca_bundle(b: BackendSettings, path: str | Path | None, source: str) -> BackendSettings:
    """``ca_bundle`` resolved against the config file's folder, and checked to be PEM."""
    if b.ca_bundle is None:
        return b
    bundle = b.ca_bundle.expanduser()
    if not bundle.is_absolute() and path is not None:
        bundle = Path(path).parent / bundle
    check_pem(bundle, f"{source}: [[backend]] {b.name!r}: key 'ca_bundle'")
    return b.model_copy(update={"ca_bundle": bundle})


def _with_files(b: BackendSettings, path: str | Path | None, source: str) -> BackendSettings:
    """The other files a backend names (a ComfyUI workflow), resolved like ``ca_bundle``."""
    try:
        return b.with_files_from(None if path is None else Path(path).parent)
    except ConfigError as exc:
        raise ConfigError(f"{source}: [[backend]] {b.name!r}: {exc}") from None


def _validate_service(raw: Any, source: str) -> ServiceSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [service] must be a table")
    try:
        return ServiceSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: [service]: {errors_text(exc)}") from None


def _service_from_env(service: ServiceSettings, env: Mapping[str, str], source: str) -> ServiceSettings:
    """``$IMAGEGATE_STATE_URL`` when the file sets no ``state_url``."""
    url = env.get(STATE_URL_ENV, "").strip()
    if not url or service.state_url:
        return service
    try:
        return ServiceSettings.model_validate({**service.model_dump(exclude_unset=True), "state_url": url})
    except ValidationError as exc:
        raise ConfigError(f"environment variable {STATE_URL_ENV}: {errors_text(exc)}") from None


def _validate_backend(raw: Any, index: int, source: str, kinds: KindTable) -> BackendSettings:
    where = f"{source}: [[backend]] #{index + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    if "name" in raw:
        where += f" (name = {raw['name']!r})"
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in kinds.kinds:
        known = ", ".join(kinds.kinds)
        raise ConfigError(f"{where}: key 'kind': must be one of {known} (got {kind!r})")
    secretish = [k for k in raw if k in _SECRETISH]
    if secretish:
        raise ConfigError(
            f"{where}: key {secretish[0]!r}: secrets are never read from the config file; "
            "put the value in the environment or .env and name the variable with *_env"
        )
    try:
        return kinds.settings_class(kind).model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {errors_text(exc)}") from None


def _expanded(b: BackendSettings, index: int, source: str) -> tuple[BackendSettings, ...]:
    """The backends one table stands for (a short form names several)."""
    try:
        return b.expand()
    except ValidationError as exc:
        where = f"{source}: [[backend]] #{index + 1} (name = {b.name!r})"
        raise ConfigError(f"{where}: {errors_text(exc)}") from None


def _check_unique(tables: list[tuple[int, BackendSettings]], source: str) -> None:
    """Names are unique, also those a short form made (``[[backend]] #`` is the table's)."""
    seen: dict[str, int] = {}
    for i, b in tables:
        if b.name in seen:
            raise ConfigError(
                f"{source}: [[backend]] #{i + 1}: key 'name': {b.name!r} is already used by "
                f"[[backend]] #{seen[b.name] + 1}; names must be unique"
            )
        seen[b.name] = i


def _resolve_secrets(
    backends: list[BackendSettings], env: Mapping[str, str], source: str, *, require: bool = True
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The secrets found per backend, and the backends left out for a missing one (why)."""
    secrets: dict[str, dict[str, str]] = {}
    disabled: dict[str, str] = {}
    for b in backends:
        found: dict[str, str] = {}
        for purpose, var in b.secret_env_names().items():
            value = env.get(var, "").strip()
            if value:
                found[purpose] = value
            elif require and purpose in b.required_secrets() and b.name not in disabled:
                disabled[b.name] = (
                    f"backend {b.name!r} ({b.kind}) is disabled: the environment variable "
                    f"{var} (key '{purpose}_env') is not set (set it, or put it in .env)"
                )
        secrets[b.name] = found
    return secrets, disabled


def _service_secrets(
    service: ServiceSettings, env: Mapping[str, str], source: str, *, require: bool
) -> dict[str, dict[str, str]]:
    """``[service] webhook_secret_env``'s value, under SERVICE_SECRETS."""
    var = service.webhook_secret_env
    if var is None:
        return {}
    value = env.get(var, "").strip()
    if not value and require:
        raise ConfigError(
            f"{source}: [service] key 'webhook_secret_env': the environment variable {var} "
            "is not set (set it, or put it in .env)"
        )
    return {SERVICE_SECRETS: {"webhook_secret": value}} if value else {}
