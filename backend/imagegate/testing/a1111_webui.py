"""The A1111 emulator's "GPU": one job at a time, sampling steps over time, progress, previews,
interrupt, the way the webui keeps them.

Sources (AUTOMATIC1111 code as preserved in the Forge mirror; Forge HEAD keeps it nearly
verbatim): ``modules/progress.py`` @86b3aa94 (task registry, ``POST /internal/progress``,
``GET /internal/pending-tasks``), ``modules/api/api.py`` @45b8a499 (``text2imgapi``,
``progressapi``, ``interruptapi``), ``modules/shared_state.py`` @45b8a499 (``begin``, ``end``,
``interrupt``, ``set_current_image``), ``webui.py`` @45b8a499 (where the routes are
registered). The rules this module keeps:

- txt2img takes ``force_task_id`` or makes ``task(txt2img-XXXXXXX)``; the id is *queued*
  (``add_task_to_queue``) before the global ``queue_lock`` is taken, *active* once it holds
  the lock (``start_task``), *finished* after (``finish_task``, the last 16 kept). A failure
  skips ``finish_task``: the id stays active until the next job starts.
- The lock serialises every generation (one GPU). The work runs in a thread of its own in
  the webui: a client that goes away does NOT stop it (FastAPI runs the sync endpoint to its
  end). Only ``POST /sdapi/v1/interrupt`` does, and it is global: it interrupts whatever job
  runs, or nothing (``begin()`` resets the flag, so an interrupt before a job is lost). The
  interrupted call still answers 200 with its (partial) images.
- ``POST /internal/progress {id_task, id_live_preview=-1, live_preview=true}`` answers
  ``{active, queued, completed, progress, eta, live_preview, id_live_preview, textinfo}``:
  not active -> progress/eta/live_preview null, ``textinfo`` "In queue: k/N" or "Waiting...";
  active -> ``progress = job_no/job_count + sampling_step/sampling_steps/job_count`` (capped
  at 1), ``eta = elapsed/progress - elapsed`` (null at 0), and a ``data:image/png;base64``
  preview when one newer than ``id_live_preview`` exists. It and ``/internal/pending-tasks``
  are registered only with the UI: not under ``--nowebui`` (``internal_api=False`` here).
- ``GET /sdapi/v1/progress?skip_current_image=false`` is global (no task id): with no job,
  ``{progress: 0, eta_relative: 0}``; else progress starts at 0.01, ``eta_relative =
  elapsed/progress - elapsed``, ``current_image`` is raw base64 (no ``data:`` prefix).
- A preview is made when a progress call finds ``show_progress_every_n_steps`` new steps
  since the last one (``set_current_image``); the webui's default is 10 steps, this
  emulator's 1 (small jobs should show something); ``live_previews_enable`` turns them off.
"""

from __future__ import annotations

import asyncio
import base64
import random
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.testing.images import make_image

__all__ = ["WEBUI_KEY", "Interrupt", "Latent", "Webui", "add_progress_routes"]

FINISHED_KEPT = 16  # modules/progress.py: finished_tasks.pop(0) past 16


@dataclass(frozen=True)
class Interrupt:
    """One ``POST /sdapi/v1/interrupt``: when (monotonic) and which task it hit (None: idle)."""

    at: float
    task: str | None


@dataclass
class Latent:
    prompt: str
    seed: int
    width: int
    height: int


@dataclass
class Webui:
    """The webui's shared state (``shared.state`` + ``modules/progress``), and its options."""

    step_s: float = 0.0
    show_progress_every_n_steps: int = 1
    live_previews_enable: bool = True
    internal_api: bool = True
    honours_force_task_id: bool = True
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    current_task: str | None = None
    pending_tasks: OrderedDict[str, float] = field(default_factory=OrderedDict)
    finished_tasks: list[str] = field(default_factory=list)
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    time_start: float = 0.0
    id_live_preview: int = 0
    current_image: bytes | None = None
    current_image_sampling_step: int = 0
    latent: Latent | None = None
    interrupts: list[Interrupt] = field(default_factory=list)
    # monotonic times, per task, for the benchmarks: its first step done, its first report
    first_step_at: dict[str, float] = field(default_factory=dict)
    first_progress_at: dict[str, float] = field(default_factory=dict)
    _jobs: set[asyncio.Task[Any]] = field(default_factory=set)

    # -- modules/progress.py ------------------------------------------------------------

    def task_id(self, body: dict[str, Any]) -> str:
        forced = body.get("force_task_id") if self.honours_force_task_id else None
        if isinstance(forced, str) and forced:
            return forced
        return "task(txt2img-" + "".join(random.choices(string.ascii_uppercase + string.digits, k=7)) + ")"

    def _finish_task(self, task_id: str) -> None:
        if self.current_task == task_id:
            self.current_task = None
        self.finished_tasks.append(task_id)
        if len(self.finished_tasks) > FINISHED_KEPT:
            self.finished_tasks.pop(0)

    # -- a job on the one GPU -----------------------------------------------------------

    def submit(
        self, task_id: str, *, steps: int, n_iter: int, latent: Latent,
        render: Callable[[], list[str]],
    ) -> asyncio.Task[list[str]]:
        """Queue the job and run it to its end whatever the client does (a task of its own)."""
        self.pending_tasks[task_id] = time.time()
        job = asyncio.create_task(self._run(task_id, steps, n_iter, latent, render))
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    async def _run(
        self, task_id: str, steps: int, n_iter: int, latent: Latent, render: Callable[[], list[str]]
    ) -> list[str]:
        async with self.lock:
            self._begin()
            self.current_task = task_id  # start_task
            self.pending_tasks.pop(task_id, None)
            try:
                self.job_count, self.sampling_steps, self.latent = n_iter, steps, latent
                for job_no in range(n_iter):
                    self.job_no, self.sampling_step = job_no, 0
                    for _ in range(steps):
                        if self.interrupted:
                            break
                        if self.step_s:
                            await asyncio.sleep(self.step_s)
                        self.sampling_step += 1
                        self.first_step_at.setdefault(task_id, time.monotonic())
                    if self.interrupted:
                        break
                images = render()
                self._finish_task(task_id)
                return images
            finally:
                self.job, self.job_count = "", 0  # end()

    def _begin(self) -> None:
        self.sampling_step, self.time_start, self.job_count, self.job_no = 0, time.time(), -1, 0
        self.latent, self.current_image, self.current_image_sampling_step = None, None, 0
        self.id_live_preview, self.interrupted, self.job = 0, False, "scripts_txt2img"

    async def stop(self, app: web.Application | None = None) -> None:
        """The process ends: its jobs with it (an ``on_cleanup`` hook)."""
        jobs = list(self._jobs)
        for job in jobs:
            job.cancel()
        if jobs:
            await asyncio.wait(jobs)

    def interrupt(self) -> None:
        self.interrupts.append(Interrupt(time.monotonic(), self.current_task))
        self.interrupted = True

    # -- progress -----------------------------------------------------------------------

    def _progress(self, *, floor: float = 0.0) -> float:
        progress = floor
        if self.job_count > 0:
            progress += self.job_no / self.job_count
            if self.sampling_steps > 0:
                progress += 1 / self.job_count * self.sampling_step / self.sampling_steps
        return progress

    def set_current_image(self) -> None:
        every = self.show_progress_every_n_steps
        if not self.live_previews_enable or every == -1 or self.latent is None:
            return
        if self.sampling_step - self.current_image_sampling_step >= every:
            lat = self.latent
            small = (max(8, lat.width // 8 // 8 * 8), max(8, lat.height // 8 // 8 * 8))
            self.current_image = make_image(*small, lat.prompt, lat.seed * 1000 + self.sampling_step)
            self.current_image_sampling_step = self.sampling_step
            self.id_live_preview += 1

    def internal_progress(self, req: dict[str, Any]) -> dict[str, Any]:
        id_task = req.get("id_task")
        active, queued = id_task == self.current_task, id_task in self.pending_tasks
        completed = id_task in self.finished_tasks
        if not active:
            textinfo = "Waiting..."
            if queued:
                order = sorted(self.pending_tasks, key=lambda t: self.pending_tasks[t])
                textinfo = f"In queue: {order.index(str(id_task)) + 1}/{len(order)}"
            return {"active": False, "queued": queued, "completed": completed, "progress": None,
                    "eta": None, "live_preview": None, "id_live_preview": -1, "textinfo": textinfo}
        progress = min(self._progress(), 1)
        if progress > 0:
            self.first_progress_at.setdefault(str(id_task), time.monotonic())
        elapsed = time.time() - self.time_start
        eta = elapsed / progress - elapsed if progress > 0 else None
        live_preview, id_live_preview = None, req.get("id_live_preview", -1)
        if self.live_previews_enable and req.get("live_preview", True):
            self.set_current_image()
            if self.id_live_preview != id_live_preview and self.current_image is not None:
                live_preview = "data:image/png;base64," + base64.b64encode(self.current_image).decode()
                id_live_preview = self.id_live_preview
        return {"active": True, "queued": queued, "completed": completed, "progress": progress,
                "eta": eta, "live_preview": live_preview, "id_live_preview": id_live_preview,
                "textinfo": None}

    def global_progress(self, skip_current_image: bool) -> dict[str, Any]:
        state = {"skipped": False, "interrupted": self.interrupted, "stopping_generation": False,
                 "job": self.job, "job_count": self.job_count, "job_timestamp": "0",
                 "job_no": self.job_no, "sampling_step": self.sampling_step,
                 "sampling_steps": self.sampling_steps}
        if self.job_count == 0:
            return {"progress": 0, "eta_relative": 0, "state": state, "current_image": None,
                    "textinfo": None}
        progress = self._progress(floor=0.01)
        elapsed = time.time() - self.time_start
        eta_relative = elapsed / progress - elapsed
        self.set_current_image()
        image = None
        if self.current_image is not None and not skip_current_image:
            image = base64.b64encode(self.current_image).decode()
        return {"progress": min(progress, 1), "eta_relative": eta_relative, "state": state,
                "current_image": image, "textinfo": None}


WEBUI_KEY = web.AppKey("webui", Webui)


def add_progress_routes(app: web.Application, webui: Webui) -> None:
    """``/sdapi/v1/progress``, ``/sdapi/v1/interrupt`` and, unless ``--nowebui``,
    ``/internal/progress`` and ``/internal/pending-tasks``."""
    app[WEBUI_KEY] = webui
    app.on_cleanup.append(webui.stop)
    app.router.add_get("/sdapi/v1/progress", _global_progress)
    app.router.add_post("/sdapi/v1/interrupt", _interrupt)
    if webui.internal_api:
        app.router.add_post("/internal/progress", _internal_progress)
        app.router.add_get("/internal/pending-tasks", _pending_tasks)


async def _global_progress(request: web.Request) -> web.Response:
    skip = request.query.get("skip_current_image", "false").lower() in ("true", "1")
    return web.json_response(request.app[WEBUI_KEY].global_progress(skip))


async def _interrupt(request: web.Request) -> web.Response:
    request.app[WEBUI_KEY].interrupt()
    return web.json_response({})


async def _internal_progress(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        body = None
    problems = _check_progress_request(body)
    if problems:
        return web.json_response({"detail": problems}, status=422)
    assert isinstance(body, dict)
    return web.json_response(request.app[WEBUI_KEY].internal_progress(body))


def _check_progress_request(body: Any) -> list[dict[str, Any]]:
    """ProgressRequest's types (pydantic v1 in the webui: ``id_task`` str, ``id_live_preview``
    int, ``live_preview`` bool), as FastAPI's 422 detail."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    checks = (("id_task", str, "str type expected", "type_error.str"),
              ("id_live_preview", int, "value is not a valid integer", "type_error.integer"),
              ("live_preview", bool, "value could not be parsed to a boolean", "type_error.bool"))
    return [
        {"loc": ["body", key], "msg": msg, "type": kind}
        for key, cls, msg, kind in checks
        if body.get(key) is not None and not isinstance(body[key], cls)
    ]


async def _pending_tasks(request: web.Request) -> web.Response:
    tasks = list(request.app[WEBUI_KEY].pending_tasks)
    return web.json_response({"size": len(tasks), "tasks": tasks})
