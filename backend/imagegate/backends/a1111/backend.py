"""The AUTOMATIC1111 backend: one txt2img call, its progress watched, interrupted when ours."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any

import aiohttp

from imagegate.backends.a1111.progress import (
    TaskProgress,
    parse_global_progress,
    parse_internal_progress,
    report_progress,
)
from imagegate.backends.a1111.wire import (
    BUILT_IN,
    A1111Settings,
    basic_auth_headers,
    build_request,
    discovered_capabilities,
    parse_response,
)
from imagegate.backends.http import HttpBackend, gather_all
from imagegate.backends.images import check_image
from imagegate.capabilities import Capabilities
from imagegate.errors import BackendError, BadResponse, GenerationTimeout
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = [
    "A1111Backend",
]

log = get_logger(__name__)

_TXT2IMG = "/sdapi/v1/txt2img"
_PROGRESS = "/sdapi/v1/progress?skip_current_image=true"
_LISTS = ("/sdapi/v1/sd-models", "/sdapi/v1/samplers", "/sdapi/v1/schedulers", "/sdapi/v1/options")
_LIST_CAP = 8 * 1024 * 1024  # /options and a big model folder are tens of KB; generous
_GLOBAL_PROGRESS = "/sdapi/v1/progress"
_INTERNAL_PROGRESS = "/internal/progress"
_INTERRUPT = "/sdapi/v1/interrupt"
_PROBE_CAP = 1024 * 1024
_PROGRESS_CAP = 8 * 1024 * 1024  # a progress answer may carry a full-size preview
_UNKNOWN_POLLS = 3  # polls the webui may not know our task id before we read the global one
_INTERRUPT_BUDGET_S = 1.0  # best effort: a cancelled request waits at most this for it


class A1111Backend(HttpBackend[A1111Settings]):
    """A local AUTOMATIC1111 webui."""

    kind = "a1111"

    def __init__(
        self, settings: A1111Settings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._headers = basic_auth_headers(secrets.get("username"), secrets.get("password"))
        self._internal: bool | None = None  # /internal/progress served? None: not known yet
        self._interrupts: set[asyncio.Task[None]] = set()
        self._capabilities = BUILT_IN

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        task_id = f"task(imagegate-{secrets.token_hex(8)})"
        payload = build_request(request, model=self.settings.model, task_id=task_id)
        # base64 in JSON: 4/3 of the image bytes, plus the info text
        cap = self.settings.max_image_bytes * request.n * 2
        reporter = self.reporter
        watch = (
            asyncio.create_task(self._watch(task_id, request.steps, reporter, deadline))
            if reporter.listening else None
        )
        try:
            answer = await self.send(
                "POST", self.base_url + _TXT2IMG, json=payload, deadline=deadline, cap=cap
            )
        except (asyncio.CancelledError, GenerationTimeout):
            await self._interrupt_if_running(task_id)  # the webui would go on: stop our job
            raise
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.wait([watch])
        pairs, note = parse_response(answer.json(backend=self.name), backend=self.name, asked=request.n)
        return [
            check_image(data, backend=self.name, seed=seed, info=note if i == 0 else None)
            for i, (data, seed) in enumerate(pairs)
        ]

    # -- progress -----------------------------------------------------------------------

    async def _watch(
        self, task_id: str, steps: int | None, reporter: Reporter, deadline: Deadline
    ) -> None:
        """Poll the task's progress until cancelled (txt2img answered) or the deadline."""
        preview_id, unknown = -1, 0
        while not deadline.expired:
            try:
                if self._internal is not False and unknown < _UNKNOWN_POLLS:
                    state = await self._task_progress(task_id, preview_id, reporter.previews, deadline)
                    unknown = 0 if state is None or state.known else unknown + 1
                else:
                    state = await self._global_progress(reporter.previews, deadline)
            except BackendError as exc:  # progress is a courtesy: never fail the image for it
                log.debug("progress_poll_failed", backend=self.name, error_kind=exc.kind)
                state = None
            if state is not None:
                preview_id = report_progress(state, steps, reporter, preview_id)
            await asyncio.sleep(min(self.settings.progress_interval_s, deadline.remaining()))

    async def _task_progress(
        self, task_id: str, preview_id: int, previews: bool, deadline: Deadline
    ) -> TaskProgress | None:
        """Our task's state from ``/internal/progress``; None when the route is not served."""
        body = {"id_task": task_id, "id_live_preview": preview_id, "live_preview": previews}
        answer = await self.send(
            "POST", self.base_url + _INTERNAL_PROGRESS, json=body, deadline=deadline,
            cap=_PROGRESS_CAP, ok=(200, 404, 405),
        )
        if answer.status != 200:
            self._internal = False
            log.info("a1111_internal_progress_missing", backend=self.name, status=answer.status)
            return None
        self._internal = True
        return parse_internal_progress(answer.json(backend=self.name))

    async def _global_progress(self, previews: bool, deadline: Deadline) -> TaskProgress:
        query = "" if previews else "?skip_current_image=true"
        answer = await self.send(
            "GET", self.base_url + _GLOBAL_PROGRESS + query, deadline=deadline, cap=_PROGRESS_CAP
        )
        return parse_global_progress(answer.json(backend=self.name))

    # -- cancel -------------------------------------------------------------------------

    async def _interrupt_if_running(self, task_id: str) -> None:
        """Interrupt the webui if our task is the one it runs; shielded, so that the request
        being cancelled cannot cut it short (it takes two small local calls)."""
        job = asyncio.create_task(self._interrupt(task_id))
        self._interrupts.add(job)
        job.add_done_callback(self._interrupts.discard)
        await asyncio.shield(job)

    async def _interrupt(self, task_id: str) -> None:
        deadline = Deadline.after(min(_INTERRUPT_BUDGET_S, self.timeouts.read))
        try:
            state = (
                await self._task_progress(task_id, -1, False, deadline)
                if self._internal is not False else None
            )
            if state is None or not state.active:
                why = "queued" if state is not None and state.queued else "not known to be running"
                log.info("a1111_task_abandoned", backend=self.name, task=task_id, reason=why)
                return
            await self.send("POST", self.base_url + _INTERRUPT, json={}, deadline=deadline,
                            cap=_PROBE_CAP, ok=(200, 204))
            log.info("a1111_interrupted", backend=self.name, task=task_id)
        except BackendError as exc:
            log.warning("a1111_interrupt_failed", backend=self.name, error_kind=exc.kind)
        except RuntimeError as exc:  # the shared session closed under us (shutdown)
            log.warning("a1111_interrupt_failed", backend=self.name, error=str(exc))

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send(
            "GET", self.base_url + _PROGRESS, deadline=deadline, cap=_PROBE_CAP, timings=timings
        )
        body = answer.json(backend=self.name)
        if not isinstance(body, dict):
            raise BadResponse("progress answer is not a JSON object", backend=self.name)
        job = (body.get("state") or {}).get("job") or "idle"
        await self._discover(deadline)
        return f"progress {float(body.get('progress') or 0):.0%}, job: {job}"

    async def _discover(self, deadline: Deadline) -> None:
        """Refresh the capabilities from the list endpoints; a failure keeps the old ones
        (the probe itself passed: the webui answers)."""
        async def get(path: str) -> Any:
            answer = await self.send("GET", self.base_url + path, deadline=deadline, cap=_LIST_CAP,
                                     ok=(200, 404))
            return answer.json(backend=self.name) if answer.status == 200 else None
        try:
            lists = await gather_all(get(path) for path in _LISTS)
        except BackendError as exc:
            log.info("capabilities_not_refreshed", backend=self.name, error_kind=exc.kind, error=str(exc))
            return
        self._capabilities = discovered_capabilities(*lists)
