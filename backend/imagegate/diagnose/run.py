"""``imagegate diagnose``: which backends answer, where each one fails, and what to do.

Every backend is diagnosed at the same time; within one backend the steps run in order, each
timed and bounded by its own timeout (``--timeout``), and a step after a failed one is skipped
with the reason:

    dns -> tcp -> tls -> http (the backend's own probe) -> auth
        -> runtime -> gradio_api -> params          (Spaces only)
        -> generate                                 (with --generate)

A Space given by id is reached through the Hub (dns/tcp/tls/http are the Hub's; the app is
asked for its API only when the Space runs); a Space given as ``src`` is reached directly. The
verdict is ``down`` when a step failed, ``degraded`` when one warned, else ``ok``; the advice
comes from :mod:`imagegate.diagnose.advice`. Exit status: 0 when at least one backend is ok, 1 when
none is, 2 for a configuration error. No secret is printed: a key shows as present/absent and
at most its last 4 characters. The JSON document is described in
:mod:`imagegate.diagnose.report`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import aiohttp

from imagegate.backends.base import ImageBackend
from imagegate.backends.hf_space import HFSpaceSettings
from imagegate.backends.registry import backend_class, create_backend, load_settings
from imagegate.backends.transport import make_ssl_context, timing_trace_config
from imagegate.config import BackendSettings, Settings
from imagegate.config.redact import Redactor
from imagegate.diagnose.http import (
    FirstResponse,
    auth_step,
    credentials,
    generate_step,
    probe_step,
    public_url,
)
from imagegate.diagnose.net import Target, connection_steps
from imagegate.diagnose.render import write_report
from imagegate.diagnose.report import SCHEMA_VERSION, BackendReport, Report, Step, StepLog
from imagegate.diagnose.space import space_steps
from imagegate.errors import ConfigError
from imagegate.logging import get_logger

__all__ = ["diagnose", "run", "run_cli"]

log = get_logger(__name__)

EXIT_CONFIG = 2


async def diagnose(
    settings: Settings,
    *,
    names: Sequence[str] | None = None,
    generate: bool = False,
    timeout: float = 10.0,
) -> Report:
    """Diagnose the configured backends (or those named), all at once."""
    if timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 (got {timeout:g})")
    configs = [settings.backend(n) for n in names] if names else list(settings.backends)
    if not configs:
        raise ConfigError(f"{settings.source}: no backend is configured")
    _prepare(configs)
    started_at, start = dt.datetime.now(dt.UTC), time.monotonic()
    reports = await asyncio.gather(*(_diagnose_one(cfg, settings, timeout, generate) for cfg in configs))
    return Report(
        backends=list(reports),
        timeout_s=timeout,
        generate=generate,
        config_source=settings.source,
        started_at=started_at,
        elapsed_s=time.monotonic() - start,
    )


def _prepare(configs: Sequence[BackendSettings]) -> None:
    """Import backend modules and load trust stores before the clocks start: that work blocks
    the event loop and would be counted in whichever step happened to be running."""
    for cfg in configs:
        make_ssl_context(cfg.ca_bundle)
        try:
            backend_class(cfg.kind)
        except Exception:  # noqa: BLE001 - reported as backend_missing by the step that needs it
            log.debug("backend_import_failed", backend=cfg.name, kind=cfg.kind)


async def _diagnose_one(
    cfg: BackendSettings, settings: Settings, timeout: float, generate: bool
) -> BackendReport:
    secrets = settings.secrets.get(cfg.name, {})
    creds = credentials(cfg, secrets)
    space = cfg if isinstance(cfg, HFSpaceSettings) else None
    target = (space.space or public_url(str(space.src))) if space else public_url(cfg.endpoint)
    tgt = Target.from_url(cfg.endpoint)
    facts = {
        "kind": cfg.kind, "host": tgt.host, "port": tgt.port, "timeout": f"{timeout:g}",
        "connect_timeout": f"{cfg.connect_timeout_s:g}", "env": " / ".join(c["env"] for c in creds),
        "space": (space.space or space.src) if space else None, "url": public_url(cfg.endpoint),
        "api_name": space.api_name if space else None,
    }
    steps = StepLog()
    first = FirstResponse()
    start = time.monotonic()
    async with aiohttp.ClientSession(trace_configs=[timing_trace_config(), first.trace_config()]) as session:
        backend: ImageBackend[Any] | None = None
        try:
            if space is not None:
                await space_steps(steps, space, secrets.get("token"), session, first, timeout, creds)
            else:
                backend = await _http_steps(steps, cfg, secrets, session, first, timeout, creds)
            if generate:
                await _generate(steps, cfg, settings, secrets, session, backend)
        finally:
            if backend is not None:
                await backend.aclose()
    report = BackendReport(cfg.name, cfg.kind, target, steps.steps, creds, facts, time.monotonic() - start)
    log.info("backend_diagnosed", backend=cfg.name, verdict=report.verdict, elapsed_s=round(report.elapsed_s, 3))
    return report


async def _http_steps(steps: StepLog, cfg: BackendSettings, secrets: dict[str, str], session: aiohttp.ClientSession,
                      first: FirstResponse, timeout: float, creds: list[dict[str, Any]]) -> ImageBackend[Any] | None:
    """dns/tcp/tls, then the backend's own probe (http) and the verdict on its credentials."""
    target = Target.from_url(cfg.endpoint)
    if not await connection_steps(steps, target, make_ssl_context(cfg.ca_bundle), timeout):
        failed = next(s.name for s in steps.steps if s.status == "fail")
        steps.skip(("http",), f"{failed} failed")
        steps.add(auth_step(cfg, creds, answered=False, error=None))
        return None
    try:
        backend = create_backend(cfg, secrets=secrets, session=session)
    except Exception as exc:  # noqa: BLE001 - a missing or broken backend module
        data = {"error": f"{type(exc).__name__}: {exc}"}
        steps.add(Step("http", "fail", None, data["error"], "backend_missing", data))
        steps.skip(("auth",), "the backend could not be built")
        return None
    step, error = await probe_step(backend, first, timeout)
    steps.add(step)
    steps.add(auth_step(cfg, creds, answered=first.seen is not None, error=error))
    return backend


async def _generate(steps: StepLog, cfg: BackendSettings, settings: Settings, secrets: dict[str, str],
                    session: aiohttp.ClientSession, backend: ImageBackend[Any] | None) -> None:
    failed = next((s.name for s in steps.steps if s.status == "fail"), None)
    if failed is not None:
        steps.skip(("generate",), f"{failed} failed")
        return
    if backend is None:
        try:
            backend = create_backend(cfg, secrets=secrets, session=session)
        except Exception as exc:  # noqa: BLE001 - a missing or broken backend module
            data = {"error": f"{type(exc).__name__}: {exc}"}
            steps.add(Step("generate", "fail", None, data["error"], "backend_missing", data))
            return
        try:
            steps.add(await generate_step(backend, _generate_budget(cfg, settings)))
        finally:
            await backend.aclose()
        return
    steps.add(await generate_step(backend, _generate_budget(cfg, settings)))


def _generate_budget(cfg: BackendSettings, settings: Settings) -> float:
    """What the service itself would give this backend for one request."""
    return float(min(cfg.connect_timeout_s + cfg.read_timeout_s, settings.service.deadline_s))


def all_secrets(settings: Settings) -> Redactor:
    """Every configured secret, in every form a server may echo it (Basic tokens included)."""
    return Redactor.for_settings(settings.secrets)


def run(
    settings: Settings,
    *,
    names: Sequence[str] | None = None,
    generate: bool = False,
    timeout: float = 10.0,
    as_json: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Diagnose, print the report on ``stream`` (stdout), and return the exit status."""
    stream = stream or sys.stdout
    report = asyncio.run(diagnose(settings, names=names, generate=generate, timeout=timeout))
    write_report(report, stream, as_json=as_json, secrets=all_secrets(settings))
    return report.exit_code


def config_error(exc: ConfigError, *, as_json: bool, prog: str = "imagegate diagnose") -> int:
    """Report a configuration error (stderr; also stdout as JSON with --json); exit 2."""
    if as_json:
        doc = {"schema_version": SCHEMA_VERSION, "error": {"kind": exc.kind, "message": str(exc)}, "backends": []}
        print(json.dumps(doc))
    print(f"{prog}: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def run_cli(args: argparse.Namespace) -> int:
    """``imagegate diagnose [--config PATH] [--backend NAME ...] [--generate] [--json] [--timeout S]``."""
    try:
        settings = load_settings(args.config, require_secrets=False)
        return run(settings, names=args.backends, generate=args.generate, timeout=args.timeout,
                   as_json=args.json)
    except ConfigError as exc:
        return config_error(exc, as_json=args.json)
