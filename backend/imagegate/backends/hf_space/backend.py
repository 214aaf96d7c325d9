"""A Hugging Face Space (or any Gradio app) through gradio_client, without blocking the loop.

gradio_client is synchronous: its constructor does network I/O, and a prediction is a
``Job`` (a ``concurrent.futures.Future``) run by the client's own thread pool. Here:

- every blocking call (building the client, cancelling a job, closing) runs on this backend's
  own ThreadPoolExecutor, and predictions on the client's pool sized ``max_concurrency``; an
  asyncio semaphore of the same size queues further callers without holding any thread;
- a job is awaited through ``asyncio.wrap_future(job.future)`` (the Job's inner future:
  wrapping the Job itself would make a cancelled await call ``Job.cancel()`` -- an HTTP POST
  -- on the event loop) under ``min(read_timeout_s, deadline)``; on time-out or cancellation
  the job is cancelled from a worker thread, unless another job of this client runs (gradio
  would cancel it too: ``jobs.py``); while someone listens, ``jobs.py`` turns the Job's status
  into queued/progress events and a generator's outputs into previews;
- every httpx call gradio_client makes, its SSE result stream included, is bounded by
  ``httpx.Timeout(read_timeout_s + 2, connect=connect_timeout_s)``, so no thread waits
  forever (the 2 s let our own ``read_timeout_s`` budget fire first and cancel cleanly);
- one client per Space, built lazily (or by ``connect()``, which routing races against other
  backends' handshakes), reused, dropped after a connection-level failure, closed (heartbeat
  stopped, pools shut down) by ``aclose()``;
- the token goes positionally (2nd argument): gradio_client 1.x calls it ``hf_token``, 2.x
  ``token``;
- ``download_files=False``: results stay FileData dicts (a bare path string is a path on the
  Space's server), the image fetched with aiohttp (``http.py``) from ``{src}/file=<path>``,
  capped at ``max_image_bytes``, once more if it came back short; nothing accumulates in
  GRADIO_TEMP_DIR, and the token and session cookies go to the Space's own host only.

For a hub Space (``space = "owner/name"``) the Hub's runtime stage
(``GET {hub_url}/api/spaces/{id}/runtime``) is checked before a client is built, and is the
probe; the Gradio calls go to ``src`` when set, else ``https://{owner}-{name}.hf.space``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx
from gradio_client import Client

from imagegate.backends.base import ConnectInfo, ImageBackend
from imagegate.backends.download import Downloader, DownloadPolicy
from imagegate.backends.hf_space import gradio as _gradio
from imagegate.backends.hf_space.discover import interface_capabilities, interface_from_gradio
from imagegate.backends.hf_space.gradio import ImageRef, map_gradio_errors
from imagegate.backends.hf_space.http import SpaceHttp
from imagegate.backends.hf_space.jobs import JobWatch, safe_to_cancel
from imagegate.backends.hf_space.session import Session as _Session
from imagegate.backends.hf_space.session import cancel_quietly as _cancel_quietly
from imagegate.backends.hf_space.session import close_client as _close_client
from imagegate.backends.hf_space.session import close_later as _close_later
from imagegate.backends.hf_space.session import png_bytes as _png_bytes
from imagegate.backends.hf_space.settings import HFSpaceSettings
from imagegate.backends.hf_space.spaces import known_interface, known_space
from imagegate.backends.images import check_image
from imagegate.backends.transport import error_text, make_ssl_context
from imagegate.capabilities import Capabilities
from imagegate.errors import (
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    Rejected,
)
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = ["HFSpaceBackend"]

log = get_logger(__name__)

_SEED_MAX = 2**31 - 1  # Spaces' seed sliders stop at int32 max
# httpx's read timeout is the backstop behind our own read budget, a little later so that the
# budget fires first: the job is then cancelled cleanly, instead of gradio_client's result
# stream timing out (which it reports as a bare CancelledError, printing a traceback).
_HTTPX_GRACE_S = 2.0
_CONNECTION_LEVEL = (ConnectFailed, HandshakeTimeout)
_REFETCH_PAUSE_S = 0.1  # before a spoiled download is fetched again: a rewrite takes ms
CAPABILITIES_TTL_S = 600.0  # a probe re-reads a Space's /config at most this often


class HFSpaceBackend(ImageBackend[HFSpaceSettings]):
    """One Space, reached through gradio_client."""

    kind = "hf_space"

    def __init__(
        self, settings: HFSpaceSettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets)
        self._ssl = make_ssl_context(settings.ca_bundle)
        self.space: str | None = settings.space
        self.src: str = settings.app_url
        policy = DownloadPolicy(self.src, tuple(settings.download_hosts))
        self._downloads = Downloader(self.name, policy, session, self.timeouts, self._ssl)
        self._web = SpaceHttp(
            session, self._ssl, self.timeouts, self.name, secrets.get("token"), self.redactor,
            self._downloads,
        )
        self.base_url = self.src
        known = known_space(settings.space) or {}
        given = settings.model_fields_set
        self._inputs = settings.inputs if "inputs" in given or not known else known["inputs"]
        self._fixed = settings.fixed if "fixed" in given or not known else known["fixed"]
        self._api_name = settings.api_name or (
            None if "api_name" in given else known.get("api_name")
        )
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix=f"imagegate-space-{self.name}"
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._build_lock = asyncio.Lock()
        self._session: _Session | None = None
        self._closed = False
        interface = known_interface(settings.space)
        self._capabilities = (
            interface_capabilities(interface, self._inputs)
            if interface is not None and interface.api_name == self._api_name else None
        )
        self._discovered_at: float | None = None
        self._jobs: set[Any] = set()  # in flight: a cancel must spare the others (jobs.py)

    @property
    def capabilities(self) -> Capabilities | None:
        """Built in for a known Space; replaced by what its app says (client built, probes)."""
        return self._capabilities

    # ------------------------------------------------------------ generate

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        images = []
        base_seed = request.seed if request.seed is not None else random.randint(0, _SEED_MAX)
        for i in range(request.n):  # a Space makes one image per call
            seed = (base_seed + i) % (_SEED_MAX + 1) if "seed" in self._inputs else None
            images.append(await self._generate_one(request, seed, deadline))
        return images

    async def _generate_one(
        self, request: ImageRequest, seed: int | None, deadline: Deadline
    ) -> GeneratedImage:
        await self._acquire_slot(deadline)
        try:
            session = await self._get_session(deadline)
            arguments = _gradio.build_arguments(request, self._inputs, self._fixed, seed=seed,
                                                model=self.settings.model, required=session.required)
            _gradio.check_arguments(
                arguments, session.parameters, api_name=session.api_name, backend=self.name
            )
            try:
                result = await self._run_job(session, arguments, deadline)
            except _CONNECTION_LEVEL:
                self._drop_session(session)
                raise
        finally:
            self._slots.release()
        ref, returned_seed = _gradio.find_image(result)
        if ref is None:
            raise BadResponse(
                f"{session.api_name} returned no image ({error_text(repr(result), 120)})",
                backend=self.name,
            )
        final_seed = returned_seed if returned_seed is not None else seed
        try:
            return await self._checked_image(ref, session, deadline, final_seed)
        except BadResponse as exc:
            # The image is made (maybe paid for): a download that came back short is fetched
            # again, not generated again. gradio rewrites an output's file (named by the hash
            # of its bytes) for each identical output (processing_utils.save_pil_to_cache).
            if ref.kind in ("pil", "bytes") or exc.status is not None:
                raise
            log.warning(
                "space_download_retried", backend=self.name, error=self.redactor.text(str(exc))
            )
            await asyncio.sleep(min(_REFETCH_PAUSE_S, deadline.remaining()))  # let it finish
            return await self._checked_image(ref, session, deadline, final_seed)

    async def _checked_image(
        self, ref: ImageRef, session: _Session, deadline: Deadline, seed: int | None
    ) -> GeneratedImage:
        data = await self._image_bytes(ref, session, deadline)
        return check_image(
            data, backend=self.name, seed=seed, info={"api_name": session.api_name}, quote=False
        )

    async def _acquire_slot(self, deadline: Deadline) -> None:
        """Wait (holding no thread) for one of the ``max_concurrency`` slots, within the deadline."""
        try:
            async with asyncio.timeout(max(deadline.remaining(), 0.001)):
                await self._slots.acquire()
        except TimeoutError:
            raise GenerationTimeout(
                "the deadline ran out while waiting for one of "
                f"max_concurrency={self.settings.max_concurrency} slots",
                backend=self.name,
            ) from None

    async def _run_job(
        self, session: _Session, arguments: dict[str, Any], deadline: Deadline
    ) -> Any:
        budget = min(self.timeouts.read, deadline.remaining())
        with map_gradio_errors(self.name, self.timeouts):
            job = session.client.submit(api_name=session.api_name, **arguments)  # no I/O: queues
        started = time.monotonic()
        watch = JobWatch(job, self.reporter, deadline, lambda out: self._preview(out, session, deadline))
        self._jobs.add(job)
        try:
            async with asyncio.timeout(budget):
                with map_gradio_errors(self.name, self.timeouts):
                    return await asyncio.wrap_future(job.future)
        except TimeoutError as exc:
            self._cancel_job(job)
            if isinstance(exc, BackendError):
                raise
            raise GenerationTimeout(
                f"no answer within {budget:.3g} s (read_timeout_s={self.timeouts.read:g})",
                backend=self.name,
            ) from exc
        except asyncio.CancelledError:
            self._cancel_job(job)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller cancelled us
            # The job itself ended with a CancelledError: gradio_client's result stream closed.
            raise _gradio.stream_cut_error(
                time.monotonic() - started, self.timeouts.read, backend=self.name
            ) from None
        finally:
            self._jobs.discard(job)
            await watch.stop()

    def _cancel_job(self, job: Any) -> None:
        """Cancel ``job`` from a worker thread (Job.cancel() POSTs to the app's /cancel),
        unless that would cancel another running job of this client too (then abandon it)."""
        if job.done():
            return
        if not safe_to_cancel(job, self._jobs):
            log.info("space_job_abandoned", backend=self.name, reason="another job of it runs")
            return
        with contextlib.suppress(RuntimeError):  # the executor is already shut down
            self._executor.submit(_cancel_quietly, job)

    # ------------------------------------------------------------ the client

    async def connect(self, deadline: Deadline) -> ConnectInfo:
        """Connecting to a Space is building its gradio client (the Hub's runtime stage, the
        app's config and API read, through the same client the predictions use); no job is
        submitted. At once when the client is built already."""
        if self._session is not None:
            return ConnectInfo()
        started = time.monotonic()
        await self._get_session(deadline)
        return ConnectInfo(round(time.monotonic() - started, 6), reused=False)

    async def _get_session(self, deadline: Deadline) -> _Session:
        if self._session is not None:
            return self._session
        async with self._build_lock:
            if self._session is not None:
                return self._session
            if self._closed:
                raise ConnectFailed("the backend is closed", backend=self.name)
            if self.space is not None:
                await self._web.check_runtime(
                    self.settings.hub_url,
                    self.space,
                    deadline,
                    strict=False,
                    wake_up=self.settings.wake_up,
                )
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self._build_session)
            try:
                async with asyncio.timeout(max(deadline.remaining(), 0.001)):
                    with map_gradio_errors(self.name, self.timeouts):
                        self._session = await asyncio.shield(future)
            except TimeoutError as exc:
                future.add_done_callback(self._close_orphan)  # finishes later: close it then
                if isinstance(exc, BackendError):
                    raise
                raise GenerationTimeout(
                    "the request deadline ran out while connecting to the Space", backend=self.name
                ) from exc
            except asyncio.CancelledError:
                future.add_done_callback(self._close_orphan)
                raise
            if self._closed:  # aclose() ran while the client was being built
                session, self._session = self._session, None
                _close_later(self._executor, session.client)
                raise ConnectFailed("the backend is closed", backend=self.name)
            log.info("space_client_built", backend=self.name, src=self.src,
                     api_name=self._session.api_name)
            return self._session

    def _build_session(self) -> _Session:
        """Runs in a worker thread: construct the client (network I/O) and read its API."""
        client = Client(
            self.src,
            self._secrets.get("token"),  # positional: `token` in 2.x, `hf_token` in 1.x
            max_workers=self.settings.max_concurrency,
            verbose=False,
            httpx_kwargs={
                "timeout": httpx.Timeout(
                    self.timeouts.read + _HTTPX_GRACE_S, connect=self.timeouts.connect
                )
            },
            download_files=False,
            ssl_verify=self._ssl,
            **_gradio.client_options(Client),
        )
        try:
            info = client.view_api(print_info=False, return_format="dict")
            api_name = self._api_name or _gradio.pick_api_name(info)
            endpoints = info.get("named_endpoints") or {}
            if api_name is None or api_name not in endpoints:
                named = ", ".join(endpoints) or "none"
                what = f"has no endpoint {api_name!r}" if api_name else "has no endpoint returning an image"
                raise Rejected(
                    f"the Space {what} (named endpoints: {named}); set api_name", backend=self.name
                )
            parameters = list(endpoints[api_name].get("parameters") or [])
            self._learn(getattr(client, "config", None) or {}, info, api_name)
            return _Session(client, api_name, parameters)
        except BaseException:
            _close_client(client)
            raise

    def _close_orphan(self, future: asyncio.Future[_Session]) -> None:
        if not future.cancelled() and future.exception() is None:
            _close_later(self._executor, future.result().client)

    def _drop_session(self, session: _Session) -> None:
        """Forget a client after a connection-level failure; the next call builds a new one."""
        if self._session is session:
            self._session = None
            log.info("space_client_dropped", backend=self.name)
            _close_later(self._executor, session.client)

    async def aclose(self) -> None:
        self._closed = True
        await self._downloads.aclose()
        session, self._session = self._session, None
        if session is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(RuntimeError):
                await loop.run_in_executor(self._executor, _close_client, session.client)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ the image

    async def _image_bytes(self, ref: ImageRef, session: _Session, deadline: Deadline) -> bytes:
        if ref.kind == "bytes":
            return bytes(ref.value)
        if ref.kind == "pil":
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, _png_bytes, ref.value
            )
        return await self._web.result_file(
            ref, session.client.src_prefixed, deadline, max_bytes=self.settings.max_image_bytes,
            cookies=dict(getattr(session.client, "cookies", {}) or {}),
        )

    async def _preview(self, output: Any, session: _Session, deadline: Deadline) -> bytes | None:
        """The image in a generator's intermediate ``output`` (progress.py asks for it)."""
        ref, _ = _gradio.find_image(output)
        return None if ref is None else await self._image_bytes(ref, session, deadline)

    # ------------------------------------------------------------ the probe

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        """A hub Space: its runtime stage on the Hub. A bare URL: the Gradio app's /config."""
        if self.space is not None:
            detail = await self._web.check_runtime(self.settings.hub_url, self.space, deadline, timings)
            config = None
        else:
            config = await self._web.get_json(f"{self.src}/config", deadline, timings)
            detail = f"gradio {config.get('version', '?')} app at {self.src}"
        stale = self._discovered_at is None or time.monotonic() - self._discovered_at > CAPABILITIES_TTL_S
        if stale:
            try:  # the probe passed: a Space whose API cannot be read keeps what was known
                config, info = await self._web.gradio_api(self.src, deadline, config=config)
                self._learn(config, info, self._api_name or _gradio.pick_api_name(info))
            except BackendError as exc:
                log.info("capabilities_not_refreshed", backend=self.name, error_kind=exc.kind)
        return detail

    def _learn(self, config: Mapping[str, Any], info: Mapping[str, Any], api_name: str | None) -> None:
        """Take the capabilities from the app's own description of ``api_name``."""
        found = interface_from_gradio(config, info, api_name or "", source=(
            f"discovered: {api_name} of gradio {config.get('version', '?')} app at {self.src}"))
        if found is not None:
            self._capabilities = interface_capabilities(found, self._inputs)
            self._discovered_at = time.monotonic()
