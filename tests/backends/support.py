"""What the backend tests share: the backend under test, built from a real config file inside a
running service, and its emulator over TLS; a failure with a time bound; both forms of
Retry-After; the check that a refused secret shows nowhere; the real ``imagegate`` command.

    NOVITA = BackendCase(name="novita", kind="novita", cls=NovitaBackend, request={...}, ...)
    async with NOVITA.serve(knobs, local_ca) as url: ...
    async with NOVITA.backend(url, tmp_path, local_ca, read_timeout_s=0.3) as backend: ...
    error = await fails(NOVITA.backend(url, tmp_path, local_ca), NOVITA.generate, ConnectFailed)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from aiohttp import web
from imagegate.backends.base import ImageBackend
from imagegate.config import Settings
from imagegate.errors import AllBackendsFailed, BackendError
from imagegate.models import Deadline, GeneratedImage, ImageRequest
from imagegate.routing import ImageService
from imagegate.testing import Knobs, LocalCA, serve_app
from PIL import Image
from structlog.testing import capture_logs

from tests.conftest import make_settings

B = TypeVar("B", bound=ImageBackend)
E = TypeVar("E", bound=BaseException)


@dataclass(frozen=True)
class BackendCase(Generic[B]):
    """One backend under test: its name and kind, the table keys every test sets, the env var
    its secret comes from, the request tests send unless they say otherwise, its emulator."""

    name: str
    kind: str
    cls: type[B]
    request: Mapping[str, Any]
    table: Mapping[str, Any] = field(default_factory=dict)
    env_var: str | None = None
    secret: str = ""
    create_app: Callable[..., web.Application] | None = None
    deadline_s: float = 10.0

    def serve(
        self, knobs: Knobs, local_ca: LocalCA, *, api_key: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[str]:
        """The emulator over TLS, run by ``knobs``, accepting ``api_key`` (default: ours)."""
        assert self.create_app is not None, f"{self.kind}: no emulator"
        return serve_app(self.create_app(knobs=knobs, api_key=api_key or self.secret), tls=local_ca)

    def settings(
        self,
        base_url: str | None,
        tmp_path: Path,
        local_ca: LocalCA | None = None,
        /,
        *,
        secret: str | None = None,
        environ: dict[str, str] | None = None,
        **keys: Any,
    ) -> Settings:
        """Settings with this one backend, through the real TOML loader; its secret (default:
        ours) in its env var unless ``environ`` replaces the whole environment."""
        table: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if base_url is not None:
            table["base_url"] = base_url
        if local_ca is not None:
            table["ca_bundle"] = str(local_ca.ca_file)
        table.update({**self.table, **keys})
        if environ is None:
            environ = {self.env_var: secret or self.secret} if self.env_var else {}
        return make_settings([table], environ=environ, tmp_path=tmp_path)

    def backend(
        self, base_url: str | None, tmp_path: Path, local_ca: LocalCA | None = None, /, **keys: Any
    ) -> contextlib.AbstractAsyncContextManager[B]:
        """This backend, built from a real config file (``keys`` as for ``settings``: table
        keys, ``secret=``, ``environ=``), inside a running service."""
        return self.running(self.settings(base_url, tmp_path, local_ca, **keys))

    @contextlib.asynccontextmanager
    async def running(self, settings: Settings) -> AsyncIterator[B]:
        """This backend of ``settings``, inside a running service."""
        async with ImageService(settings) as service:
            backend = service.backend(self.name)
            assert isinstance(backend, self.cls)
            yield backend

    async def generate(
        self, backend: B, deadline_s: float | None = None, **fields: Any
    ) -> list[GeneratedImage]:
        """``backend.generate`` of this case's request with ``fields`` changed."""
        request = ImageRequest(**{**self.request, **fields})
        deadline = Deadline.after(deadline_s or self.deadline_s)
        return await backend.generate(request, deadline=deadline)


async def fails(
    opened: contextlib.AbstractAsyncContextManager[B],
    call: Callable[[B], Awaitable[object]],
    error: type[E],
    *,
    match: str | None = None,
    within_s: float | None = None,
) -> E:
    """``call(backend)`` inside ``opened`` raises ``error`` (matching ``match``); with
    ``within_s``, less than that passed from the call until the service had closed."""
    async with opened as backend:
        started = time.monotonic()
        with pytest.raises(error, match=match) as caught:
            await call(backend)
    elapsed = time.monotonic() - started
    if within_s is not None:
        assert elapsed < within_s, f"{error.__name__} after {elapsed:.3f} s, bound {within_s} s"
    return caught.value


@dataclass(frozen=True)
class RetryAfter:
    """A Retry-After header of ``ahead_s`` seconds, as delta-seconds or as an HTTP date, and
    the closed range the error's ``retry_after`` must fall in."""

    ahead_s: int
    as_date: bool
    low: float
    high: float

    def headers(self) -> dict[str, str]:
        """The header, dated now (a date fixed at collection time would age)."""
        if self.as_date:
            return {"Retry-After": email.utils.formatdate(time.time() + self.ahead_s, usegmt=True)}
        return {"Retry-After": str(self.ahead_s)}

    def check(self, error: BackendError) -> None:
        assert error.retry_after is not None, "retry_after was not read"
        assert self.low <= error.retry_after <= self.high, error.retry_after


def retry_after_forms(seconds: int, date_ahead_s: int, date_range: tuple[float, float]) -> Any:
    """Parametrize ``retry_after``: ``seconds`` as delta-seconds (read exactly), and an HTTP date
    ``date_ahead_s`` seconds ahead (read within ``date_range``)."""
    return pytest.mark.parametrize(
        "retry_after",
        [
            pytest.param(RetryAfter(seconds, False, seconds, seconds), id="seconds"),
            pytest.param(RetryAfter(date_ahead_s, True, *date_range), id="http_date"),
        ],
    )


async def shown_after_refused_secret(
    settings: Settings, request: ImageRequest
) -> tuple[AllBackendsFailed, str]:
    """Generate through the one backend of ``settings``, whose secret is refused, then probe it.
    Asserts the attempt is auth_failed and was logged; returns the error and everything a user
    could see: the logs, the error and its attempt trail, the probes' health, the reprs."""
    (name,) = [b.name for b in settings.backends]
    with capture_logs() as logs:
        async with ImageService(settings) as service:
            with pytest.raises(AllBackendsFailed) as caught:
                await service.generate(request)
            table = await service.probe_all()
            health = await service.backend(name).probe(timeout=2)
            shown = repr(service.backend(name))
    assert caught.value.attempts[0].outcome == "auth_failed"
    assert logs, "the failure was logged"
    texts = [
        json.dumps(logs, default=str), repr(logs), str(caught.value), repr(caught.value.attempts),
        *(h.model_dump_json() for h in [*table, health]), shown, repr(settings),
    ]
    return caught.value, "\n".join(texts)


# --- the real command ----------------------------------------------------------------------


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_imagegate(
    *args: str, config: Path, env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> CliResult:
    """``python -m imagegate ARGS`` with ``IMAGEGATE_CONFIG=config`` and ``env`` added to an
    environment without any ``*_API_KEY``/``*_TOKEN``, without blocking the event loop (the
    emulator it talks to runs in that loop)."""
    full_env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    full_env.update(env)
    full_env["IMAGEGATE_CONFIG"] = str(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full_env, cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return CliResult(proc.returncode or 0, out.decode(), err.decode())


async def cli_generate(
    *args: str, config: Path, env: dict[str, str], cwd: Path, secret: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """``imagegate generate ARGS --json --out CWD/out``: asserts it exits 0, that every image
    file opens at the size the JSON reports and that ``secret`` is not in the output; returns
    the JSON."""
    out = str(cwd / "out")
    result = await run_imagegate(
        "generate", *args, "--json", "--out", out, config=config, env=env, cwd=cwd,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    if secret is not None:
        assert secret not in result.stdout + result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    for image in doc["images"]:
        with Image.open(image["path"]) as img:
            assert img.size == (image["width"], image["height"])
    return doc
