"""The ComfyUI backend: a workflow queued, followed over the websocket, its images fetched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import aiohttp

from imagegate.backends.comfyui.channel import LOST, Channel, Message
from imagegate.backends.comfyui.wire import (
    HistoryEntry,
    Preview,
    capabilities_for,
    combo,
    error_from_response,
    execution_error,
    parse_history,
    queue_place,
    stats_detail,
)
from imagegate.backends.comfyui.workflow import (
    BUILT_IN,
    ComfyUISettings,
    build_prompt,
    find_targets,
    load_workflow,
)
from imagegate.backends.http import MAX_DOWNLOADS, Answer, HttpBackend, gather_all
from imagegate.backends.images import check_image, keep_asked
from imagegate.backends.stopping import stop_shielded
from imagegate.capabilities import Capabilities
from imagegate.errors import (
    AuthFailed,
    BackendError,
    BadResponse,
    ConnectFailed,
    GenerationTimeout,
    HandshakeTimeout,
    Rejected,
    ServerError,
)
from imagegate.events import Reporter
from imagegate.logging import get_logger
from imagegate.models import Deadline, GeneratedImage, ImageRequest

__all__ = ["ComfyUIBackend"]

log = get_logger(__name__)

_JSON_CAP = 4 * 1024 * 1024  # /prompt, /history, /queue (which echoes whole graphs)
_INFO_CAP = 16 * 1024 * 1024  # /object_info/{class}: a checkpoint folder can be long
_SOCKET_RETRY_S = 60.0  # after a refused websocket upgrade, follow prompts by /history this long
_WS_MAX_MESSAGE = 16 * 1024 * 1024  # a preview frame (<= 512 px by default) fits easily


class ComfyUIBackend(HttpBackend[ComfyUISettings]):
    """A ComfyUI server, through its workflow API and its websocket."""

    kind = "comfyui"

    def __init__(
        self, settings: ComfyUISettings, *, secrets: Mapping[str, str], session: aiohttp.ClientSession
    ) -> None:
        super().__init__(settings, secrets=secrets, session=session)
        self._graph = load_workflow(settings.workflow) if settings.workflow else BUILT_IN
        self._targets = find_targets(self._graph, settings.inputs)
        self._classes = {node_id: node["class_type"] for node_id, node in self._graph.items()}
        self.client_id = settings.client_id or uuid.uuid4().hex  # one per instance: one socket
        self._channel = Channel(self.name)
        self._no_socket_until = 0.0
        self._checkpoints: list[str] | None = None
        self._capabilities = self._fit(None, None, "built-in: " + self._source())

    def _source(self) -> str:
        return f"workflow {self.settings.workflow.name}" if self.settings.workflow else "the built-in txt2img workflow"

    def _fit(self, models: list[str] | None, samplers: list[str] | None, source: str) -> Capabilities:
        return capabilities_for(self._targets, self._classes, models=models, samplers=samplers, source=source)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def aclose(self) -> None:
        await self._channel.aclose()
        await super().aclose()

    async def generate(self, request: ImageRequest, *, deadline: Deadline) -> list[GeneratedImage]:
        live = await self._socket(deadline)  # an unreachable server fails here, once
        checkpoint = await self._checkpoint(request, deadline)
        graph, seed = build_prompt(request, self._graph, self._targets, checkpoint=checkpoint)
        reporter = self.reporter
        prompt_id = str(uuid.uuid4())  # ours, so that it is watched before it can start
        watch = self._channel.watch(prompt_id) if live else None
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id,
                "extra_data": {"preview_method": "auto" if reporter.previews else "none"}}
        started = time.monotonic()
        try:
            answer = await self.send("POST", self.base_url + "/prompt", json=body, deadline=deadline, cap=_JSON_CAP)
            given = answer.json(backend=self.name).get("prompt_id")
            if isinstance(given, str) and given != prompt_id:  # an older server mints its own
                self._channel.forget(prompt_id)
                prompt_id, watch = given, self._channel.watch(given) if live else None
            job = Deadline(min(deadline.at, started + self.timeouts.read))
            entry = await self._follow(prompt_id, watch, reporter, job)
        except (asyncio.CancelledError, GenerationTimeout):
            await stop_shielded(lambda d: self._stop(prompt_id, d), backend=self.name, job=prompt_id)
            raise
        finally:
            self._channel.forget(prompt_id)
        images, note = keep_asked(entry.images, request.n, backend=self.name)
        if not images:
            raise BadResponse(f"prompt {prompt_id} finished with no image output", backend=self.name)
        blobs = await gather_all(
            (self.download(f"{self.base_url}/view?{urlencode(image)}", deadline) for image in images),
            limit=MAX_DOWNLOADS,
        )
        return [
            check_image(data, backend=self.name, seed=seed if i == 0 else None, quote=False,
                        info={"prompt_id": prompt_id, **(note if i == 0 else {})})
            for i, data in enumerate(blobs)
        ]

    async def _checkpoint(self, request: ImageRequest, deadline: Deadline) -> str | None:
        """The checkpoint to load: the request's, the config's, the workflow's own, else
        (the built-in names none) the server's first."""
        if "model" not in self._targets or request.model or self.settings.model:
            return self.settings.model
        node, name = self._targets["model"][0]
        if self._graph[node]["inputs"].get(name):
            return None  # the workflow's own checkpoint stays
        if self._checkpoints is None:
            await self._discover(deadline)
        if not self._checkpoints:
            raise Rejected("model: no checkpoint named and none listed by the server; set 'model' to one of "
                           "its checkpoints (models/checkpoints)", backend=self.name)
        return self._checkpoints[0]

    # -- following a prompt -----------------------------------------------------------------

    async def _follow(
        self, prompt_id: str, watch: asyncio.Queue[Message] | None, reporter: Reporter, deadline: Deadline
    ) -> HistoryEntry:
        """Wait for ``prompt_id`` to end, telling ``reporter`` its queue place, steps and
        previews; its /history record. Quiet for ``poll_interval_s`` (or no socket): ask
        /history, so that no lost message leaves it waiting."""
        running = False
        try:
            if reporter.listening:
                running = await self._report_place(prompt_id, reporter, deadline)
            while True:
                left = deadline.remaining()
                if left <= 0:
                    raise GenerationTimeout(f"prompt {prompt_id} still {'running' if running else 'queued'} "
                                            "when the time budget ran out", backend=self.name)
                message: Message | None = None
                if watch is not None:
                    try:
                        message = watch.get_nowait()  # most messages are already there: no timer
                    except asyncio.QueueEmpty:
                        try:
                            async with asyncio.timeout(min(left, self.settings.poll_interval_s)):
                                message = await watch.get()
                        except TimeoutError:
                            message = None
                else:
                    await asyncio.sleep(min(left, self.settings.poll_interval_s))
                if message == LOST:
                    watch = None
                if message is None or message == LOST:
                    entry = await self._history(prompt_id, deadline)
                    if entry is not None:
                        return entry
                    continue
                if isinstance(message, Preview):
                    reporter.preview(message.data, format=message.format)
                    continue
                assert isinstance(message, tuple)
                kind, data = message
                if kind == "status" and not running and reporter.listening:
                    running = await self._report_place(prompt_id, reporter, deadline)
                elif kind == "execution_start" or (kind == "executing" and data.get("node") is not None):
                    running = True
                elif kind == "progress" and isinstance(data.get("value"), int) and isinstance(data.get("max"), int):
                    reporter.progress(step=data["value"], steps=data["max"])
                elif kind in ("execution_error", "execution_interrupted"):
                    raise execution_error(data, prompt_id=prompt_id, backend=self.name)
                elif kind == "executing" and data.get("node") is None:
                    entry = await self._history(prompt_id, deadline)  # written before this message [CM]
                    if entry is not None:
                        return entry
        except GenerationTimeout as exc:  # ran out inside a look at /history or /queue: say where it was
            if deadline.remaining() > 0:
                raise
            raise GenerationTimeout(f"prompt {prompt_id} still {'running' if running else 'queued'} "
                                    "when the time budget ran out", backend=self.name) from exc

    async def _history(self, prompt_id: str, deadline: Deadline) -> HistoryEntry | None:
        answer = await self.send("GET", f"{self.base_url}/history/{prompt_id}", deadline=deadline, cap=_JSON_CAP)
        entry = parse_history(answer.json(backend=self.name), prompt_id, backend=self.name)
        if entry is not None and entry.error:
            raise ServerError(entry.error, backend=self.name)
        return entry

    async def _place(self, prompt_id: str, deadline: Deadline) -> tuple[str, int | None, int]:
        answer = await self.send("GET", self.base_url + "/queue", deadline=deadline, cap=_JSON_CAP)
        return queue_place(answer.json(backend=self.name), prompt_id)

    async def _report_place(self, prompt_id: str, reporter: Reporter, deadline: Deadline) -> bool:
        """Tell ``reporter`` the prompt's place in the queue; whether it is running (a failed
        look is skipped: progress never fails a generation)."""
        try:
            where, position, size = await self._place(prompt_id, deadline)
        except BackendError as exc:
            log.debug("comfyui_queue_unread", backend=self.name, error_kind=exc.kind)
            return False
        if where == "pending":
            reporter.queued(position=position, queue_size=size)
        return where == "running"

    async def _stop(self, prompt_id: str, deadline: Deadline) -> str:
        """Interrupt the prompt if it is the one running (``/interrupt`` with its id: newer
        servers interrupt only that prompt), else delete it from the queue."""
        where, _, _ = await self._place(prompt_id, deadline)
        if where == "running":
            await self.send("POST", self.base_url + "/interrupt", json={"prompt_id": prompt_id}, deadline=deadline,
                            cap=_JSON_CAP)
            return "interrupted"
        if where == "pending":
            await self.send("POST", self.base_url + "/queue", json={"delete": [prompt_id]}, deadline=deadline,
                            cap=_JSON_CAP)
            return "removed from the queue"
        return "already finished"

    # -- the websocket ------------------------------------------------------------------------

    async def _socket(self, deadline: Deadline) -> bool:
        """Whether the websocket is open (opened now if need be); False when the server
        refused the upgrade (followed by /history then). An unreachable server raises."""
        if time.monotonic() < self._no_socket_until:
            return False
        return await self._channel.ensure(lambda: self._connect(deadline))

    async def _connect(self, deadline: Deadline) -> aiohttp.ClientWebSocketResponse | None:
        scheme = "wss" if self.base_url.startswith("https:") else "ws"
        url = f"{scheme}{self.base_url[self.base_url.index(':'):]}/ws?clientId={self.client_id}"
        budget = min(self.timeouts.connect, deadline.remaining())
        options: dict[str, Any] = {"ssl": self._ssl} if scheme == "wss" and self._ssl is not None else {}
        try:
            async with asyncio.timeout(budget):
                with self.map_errors(deadline):
                    try:
                        return await self._session.ws_connect(url, headers=self._headers, heartbeat=30.0,
                                                              max_msg_size=_WS_MAX_MESSAGE, **options)
                    except aiohttp.WSServerHandshakeError as exc:
                        if exc.status in (401, 403):  # a proxy refusing our key: so would /prompt
                            raise AuthFailed(f"websocket upgrade refused: HTTP {exc.status}", backend=self.name,
                                             status=exc.status) from None
                        self._no_socket_until = time.monotonic() + _SOCKET_RETRY_S
                        log.info("comfyui_socket_refused", backend=self.name, status=exc.status)
                        return None
        except TimeoutError:
            raise HandshakeTimeout(f"websocket connection/handshake did not complete within {budget:g} s",
                                   backend=self.name) from None

    # -- probe and discovery ------------------------------------------------------------------

    def error_for(self, answer: Answer) -> BackendError:
        return error_from_response(answer.status, answer.body, answer.headers, backend=self.name)

    async def _probe(self, deadline: Deadline, timings: dict[str, float]) -> str:
        answer = await self.send("GET", self.base_url + "/system_stats", deadline=deadline, cap=_JSON_CAP,
                                 timings=timings)
        detail = stats_detail(answer.json(backend=self.name), backend=self.name)
        await self._discover(deadline)
        found = f"{len(self._checkpoints)} checkpoints" if self._checkpoints is not None else "checkpoints unread"
        return f"{detail}; {found}"

    async def _discover(self, deadline: Deadline) -> None:
        """The checkpoints and samplers the workflow's nodes can take (``/object_info`` of
        their classes); a failure keeps what was known."""
        lists: dict[str, list[str] | None] = {}
        try:
            for field in ("model", "sampler"):
                if field not in self._targets:
                    continue
                node, name = self._targets[field][0]
                cls = self._classes[node]
                answer = await self.send("GET", f"{self.base_url}/object_info/{cls}", deadline=deadline, cap=_INFO_CAP)
                lists[field] = combo(answer.json(backend=self.name), cls, name)
        except (HandshakeTimeout, ConnectFailed, AuthFailed):
            raise  # unreachable or refused: what follows would fail the same way
        except BackendError as exc:
            log.info("capabilities_not_refreshed", backend=self.name, error_kind=exc.kind, error=str(exc))
            return
        self._checkpoints = lists.get("model")
        found = [what for what, key in (("checkpoints", "model"), ("samplers", "sampler")) if lists.get(key) is not None]
        self._capabilities = self._fit(lists.get("model"), lists.get("sampler"),
                                       f"discovered: {', '.join(found) or 'nothing'} from /object_info; {self._source()}")
