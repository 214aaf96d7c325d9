"""The Space steps of a diagnosis, on plain HTTP (no gradio_client, whose constructor blocks
and retries on its own): the Hub's runtime record, the Gradio app's API description, and
whether the configured ``api_name`` / ``inputs`` / ``fixed`` match its parameter names.

Wire facts: ``GET {hub}/api/spaces/{id}/runtime`` -> ``{"stage", "hardware": {"current",
"requested"}, "domains": [{"domain", "stage"}], ...}`` (404: no such Space, or private and not
visible to the token). A Gradio app serves ``GET /config`` (``api_prefix``: "/gradio_api" since
Gradio 5, "" before) and ``GET {api_prefix}/info`` -> ``{"named_endpoints": {"/infer":
{"parameters": [{"parameter_name", "parameter_has_default", ...}]}}}``.

The app is where the Space backend sends its Gradio calls: ``src`` when set, else
``https://{owner}-{name}.hf.space``; with both ``space`` and ``src`` set, the Hub is asked
about ``space`` and the app at ``src`` is checked.

Decided: the app of a Space is asked nothing while the Space is not running (that would start
a cold start); the HF token is sent to the app only on an ``*.hf.space`` host, never to
another ``src``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from imagegate.backends.hf_space.settings import HFSpaceSettings
from imagegate.backends.hf_space.spaces import stage_group
from imagegate.backends.transport import (
    client_timeout,
    error_for_status,
    error_text,
    make_ssl_context,
    map_http_errors,
    read_body,
)
from imagegate.config import Timeouts
from imagegate.diagnose.http import FirstResponse, auth_step, http_step, public_url
from imagegate.diagnose.net import Target, connection_steps
from imagegate.diagnose.report import STEP_NAMES, Step, StepLog
from imagegate.errors import AuthFailed, BackendError, HandshakeTimeout
from imagegate.models import Deadline

__all__ = ["params_step", "runtime_step", "space_steps"]

_MAX_JSON = 8 * 1024 * 1024
# what each group of runtime stages (backends/hf_space/spaces.py) means for this step
GROUP_VERDICT: dict[str, tuple[str, str | None]] = {  # group -> (step status, advice code)
    "running": ("ok", None),
    "asleep": ("warn", "space_sleeping"),
    "starting": ("warn", "space_starting"),
    "paused": ("fail", "space_paused"),
    "broken": ("fail", "space_broken"),
    "unknown": ("warn", None),
}
_LATER = ("http", "auth", "runtime", "gradio_api", "params")


def runtime_step(space: str, body: Any, elapsed: float) -> Step:
    """The Space's stage and hardware, judged (pure)."""
    body = body if isinstance(body, dict) else {}
    stage = str(body.get("stage") or "UNKNOWN")
    hardware = body.get("hardware") if isinstance(body.get("hardware"), dict) else {}
    data = {"space": space, "stage": stage, "hardware": hardware.get("current"),
            "requested_hardware": hardware.get("requested")}
    group = stage_group(stage)
    status, code = GROUP_VERDICT[group.name]
    hw = data["hardware"] or data["requested_hardware"] or "unknown hardware"
    detail = f"{stage} on {hw}"
    if group.name == "unknown":
        detail += " (a stage imagegate does not know)"
    return Step("runtime", status, elapsed, detail, code, data)  # type: ignore[arg-type]


def _param_names(endpoint: Mapping[str, Any]) -> list[tuple[str, bool]]:
    out = []
    for p in endpoint.get("parameters") or []:
        name = p.get("parameter_name") or p.get("label")
        if name:
            out.append((str(name), bool(p.get("parameter_has_default"))))
    return out


# The rule the Space backend uses when api_name is not set (backends/_gradio.pick_api_name),
# repeated here so that diagnose does not import gradio_client.
_IMAGE_COMPONENTS = ("Image", "Gallery", "ImageEditor", "AnnotatedImage", "ImageSlider")


def _first_image_endpoint(named: Mapping[str, Any]) -> str | None:
    for api_name, endpoint in named.items():
        returns = endpoint.get("returns") if isinstance(endpoint, dict) else None
        if any(isinstance(r, dict) and r.get("component") in _IMAGE_COMPONENTS for r in returns or []):
            return str(api_name)
    return None


def params_step(info: Any, api_name: str | None, inputs: Mapping[str, str], fixed: Mapping[str, Any]) -> Step:
    """Does the app's endpoint take the parameters the config names? (pure)"""
    named = info.get("named_endpoints") if isinstance(info, dict) else None
    named = named if isinstance(named, dict) else {}
    endpoints = sorted(named)
    if api_name is None:
        api_name = _first_image_endpoint(named)
    data: dict[str, Any] = {"api_name": api_name, "endpoints": endpoints, "inputs": dict(inputs)}
    if api_name not in named:
        data["api_name"] = api_name or "(api_name not set)"
        what = f"no endpoint {api_name}" if api_name else "api_name is not set and no endpoint returns an image"
        detail = f"{what}; the app has: {', '.join(endpoints) or 'none'}"
        return Step("params", "fail", None, detail, "api_name_missing", data)
    params = _param_names(named[api_name])
    names = [n for n, _ in params]
    given = set(inputs.values()) | set(fixed)
    problems = [f"inputs.{field} = {name!r} is not one of them" for field, name in inputs.items() if name not in names]
    problems += [f"fixed.{name} is not one of them" for name in fixed if name not in names]
    problems += [f"{n!r} has no default and is not given" for n, has_default in params
                 if not has_default and n not in given]
    data.update(params=names, required=[n for n, d in params if not d], problems=problems)
    if problems:
        return Step("params", "fail", None, f"{api_name} takes {', '.join(names)}; " + "; ".join(problems),
                    "param_mismatch", data)
    mapping = ", ".join(f"{k}->{v}" for k, v in inputs.items())
    return Step("params", "ok", None, f"{api_name} takes {', '.join(names)}; inputs match ({mapping})", data=data)


async def _get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                    ca_bundle: Any, timeout: float) -> tuple[int, Any]:
    """GET ``url``; (status, parsed JSON on 200 else a short text). Raises BackendError."""
    deadline = Deadline.after(timeout)
    timeouts = Timeouts(connect=timeout, read=timeout)
    kwargs: dict[str, Any] = {"headers": headers, "timeout": client_timeout(timeouts, deadline)}
    if url.startswith("https:"):
        kwargs["ssl"] = make_ssl_context(ca_bundle)
    with map_http_errors("diagnose", timeouts, deadline):
        async with asyncio.timeout(timeout + 1.0), session.get(url, **kwargs) as resp:
            raw = await read_body(resp, _MAX_JSON, backend="diagnose")  # an error: its first 64 KiB
            body = json.loads(raw) if resp.status == 200 else error_text(raw)
    return resp.status, body


async def space_steps(log: StepLog, cfg: HFSpaceSettings, token: str | None, session: aiohttp.ClientSession,
                      first: FirstResponse, timeout: float, creds: list[dict[str, Any]]) -> None:
    """Connection, runtime, Gradio API and parameter steps of one ``hf_space`` backend."""
    if not await connection_steps(log, Target.from_url(cfg.endpoint), make_ssl_context(cfg.ca_bundle), timeout):
        failed = next(s.name for s in log.steps if s.status == "fail")
        log.add(auth_step(cfg, creds, answered=False, error=None))
        log.skip(("http", "runtime", "gradio_api", "params"), f"{failed} failed")
        log.steps.sort(key=_order)
        return
    if cfg.space:
        app_url = await _hub_steps(log, cfg, cfg.space, token, session, first, timeout, creds)
        if app_url is None:
            return
        headers = _app_headers(token, app_url)
        config = None
    else:
        app_url = cfg.app_url
        headers = _app_headers(token, app_url)
        config = await _src_config_steps(log, cfg, session, first, headers, timeout, creds)
        if config is None:
            return
    step, info = await _gradio_api_step(session, app_url, headers, cfg.ca_bundle, timeout, config)
    if not log.add(step):
        log.skip(("params",), "gradio_api failed")
        return
    log.add(params_step(info, cfg.api_name, cfg.inputs, cfg.fixed))


def _order(step: Step) -> int:
    return STEP_NAMES.index(step.name)


def _app_headers(token: str | None, app_url: str) -> dict[str, str]:
    """The HF token goes only to a Space's own ``*.hf.space`` host, never to another ``src``."""
    trusted = (urlsplit(app_url).hostname or "").endswith(".hf.space")
    return {"x-hf-authorization": f"Bearer {token}"} if token and trusted else {}


async def _hub_steps(log: StepLog, cfg: HFSpaceSettings, space: str, token: str | None, session: aiohttp.ClientSession,
                     first: FirstResponse, timeout: float, creds: list[dict[str, Any]]) -> str | None:
    """http/auth/runtime from the Hub; the app's URL when the Space runs, else None."""
    url = f"{cfg.hub_url}/api/spaces/{space}/runtime"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    first.reset()
    start = time.monotonic()
    try:
        status, body = await _get_json(session, url, headers, cfg.ca_bundle, timeout)
    except BackendError as exc:
        log.add(http_step(time.monotonic() - start, first.seen, exc))
        log.add(auth_step(cfg, creds, answered=first.seen is not None, error=exc))
        log.skip(("runtime", "gradio_api", "params"), "the Hub did not answer")
        return None
    elapsed = time.monotonic() - start
    error = None if status in (200, 404) else error_for_status(status, str(body), backend=cfg.name)
    log.add(http_step(elapsed, first.seen, error, "Hub runtime record" if status == 200 else ""))
    log.add(auth_step(cfg, creds, answered=True, error=error))
    if status == 404:
        data = {"space": space, "status": 404}
        log.add(Step("runtime", "fail", elapsed, f"the Hub has no Space {space} (HTTP 404)", "space_not_found", data))
    elif error is not None:
        reason = "the key was rejected" if isinstance(error, AuthFailed) else f"the Hub answered HTTP {status}"
        log.skip(("runtime",), reason)
    else:
        step = runtime_step(space, body, elapsed)
        log.add(step)
        if stage_group(step.data["stage"]).name not in ("running", "unknown"):
            log.skip(("gradio_api", "params"), f"the Space is {step.data['stage']} (asking its app would wake it)")
            return None
        return cfg.app_url  # where the backend sends its Gradio calls
    log.skip(("gradio_api", "params"), "runtime failed" if status == 404 else "the Hub did not describe the Space")
    return None


async def _src_config_steps(log: StepLog, cfg: HFSpaceSettings, session: aiohttp.ClientSession, first: FirstResponse,
                            headers: dict[str, str], timeout: float, creds: list[dict[str, Any]]) -> Any:
    """For a Space given as ``src``: the app's /config is the first HTTP answer."""
    first.reset()
    start = time.monotonic()
    error: BackendError | None = None
    config: Any = None
    try:
        status, config = await _get_json(session, f"{cfg.app_url}/config", headers, cfg.ca_bundle, timeout)
        if status != 200:
            error = error_for_status(status, str(config), backend=cfg.name)
    except BackendError as exc:
        error = exc
    log.add(http_step(time.monotonic() - start, first.seen, error, "Gradio /config" if error is None else ""))
    log.add(auth_step(cfg, creds, answered=first.seen is not None, error=error))
    log.add(Step("runtime", "skip", detail="src is a URL, not a Hub Space: no runtime record"))
    if error is not None:
        log.skip(("gradio_api", "params"), "the app did not answer /config")
        return None
    return config


async def _gradio_api_step(session: aiohttp.ClientSession, app_url: str, headers: dict[str, str],
                           ca_bundle: Any, timeout: float, config: Any) -> tuple[Step, Any]:
    """The app's endpoint list from ``{api_prefix}/info`` (after ``/config`` when not given)."""
    start = time.monotonic()
    data: dict[str, Any] = {"url": public_url(app_url)}
    host = urlsplit(app_url).hostname
    try:
        if config is None:
            status, config = await _get_json(session, f"{app_url}/config", headers, ca_bundle, timeout)
            if status != 200:
                raise error_for_status(status, f"/config: {config}", backend="diagnose")
        prefix = str(config.get("api_prefix") or "") if isinstance(config, dict) else ""
        data.update(gradio_version=config.get("version") if isinstance(config, dict) else None, api_prefix=prefix)
        status, info = await _get_json(session, f"{app_url}{prefix}/info", headers, ca_bundle, timeout)
        if status != 200:
            raise error_for_status(status, f"{prefix}/info: {info}", backend="diagnose")
    except BackendError as exc:
        data.update(status=exc.status, error=str(exc), host=host, timeout=timeout)
        code = "tls_timeout" if isinstance(exc, HandshakeTimeout) else "gradio_api_failed"
        return Step("gradio_api", "fail", time.monotonic() - start, f"{exc.kind}: {exc}", code, data), None
    named = info.get("named_endpoints") if isinstance(info, dict) else None
    data["endpoints"] = sorted(named) if isinstance(named, dict) else []
    version = f"Gradio {data['gradio_version']}, " if data.get("gradio_version") else ""
    detail = f"{version}endpoints: {', '.join(data['endpoints']) or 'none'}"
    return Step("gradio_api", "ok", time.monotonic() - start, detail, data=data), info
