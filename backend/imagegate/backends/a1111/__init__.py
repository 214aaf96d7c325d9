"""AUTOMATIC1111 stable-diffusion-webui (started with ``--api``).

Wire facts (modules/api/api.py): ``POST /sdapi/v1/txt2img`` is synchronous and serialised by
the webui's global lock, so the read budget is long (minutes) and ``max_concurrency`` defaults
to 1 with queueing. The answer is ``{"images": [b64...], "parameters": {...}, "info": "<JSON
string>"}``; the real seeds are ``json.loads(info)["all_seeds"]``. Probe:
``GET /sdapi/v1/progress?skip_current_image=true`` (cheap, works with and without
``--nowebui``, behind ``--api-auth`` when that is set).

The API's defaults are not the UI's: an omitted ``steps`` is 50 (``StableDiffusionProcessing``),
while the UI's slider starts at 20. An unknown ``sampler_name`` silently becomes the first
sampler (1.9+: ``sd_samplers.get_sampler_and_scheduler`` falls back to ``samplers[0]``), and an
unknown ``override_settings.sd_model_checkpoint`` is silently dropped
(``processing.process_images``): the webui never says it used something else.

Decided:

- ``steps`` the caller left unset is sent as 20 (``DEFAULT_STEPS``, the UI's default: what a
  webui user expects, 2.5x faster than the API's 50); ``guidance_scale`` is sent only when
  set (the API's 7.0 is also the UI's).
- ``model`` from the request or the config becomes ``override_settings.sd_model_checkpoint``
  (slow: the webui reloads weights).
- Capabilities are discovered with each probe (``GET /sdapi/v1/sd-models``, ``/samplers``,
  ``/schedulers`` (1.9+; absent before), ``/options`` for ``samples_format``), so that the
  router checks a sampler and a checkpoint against what this webui has before sending (it
  would not say): see :func:`discovered_capabilities`. The API itself enforces no size,
  steps or guidance range.

Progress and cancel (modules/progress.py @86b3aa94, api.py @45b8a499, notes in
``testing/a1111_webui.py``): every txt2img carries ``force_task_id`` (our own id; a free-form
string the webui never validates, ignored by builds that predate it). While someone listens,
``POST /internal/progress {id_task}`` is polled every ``progress_interval_s``: ``queued``
("In queue: k/N") -> a queued event, ``active`` -> progress (and ``live_preview`` when
previews are wanted). That route exists only when the webui runs with its UI: a 404 switches
this backend to the global ``GET /sdapi/v1/progress``, as does a webui that never learns our
id (an old build ignoring ``force_task_id``); the global one reports whatever job runs.
A poll that fails is skipped: progress never fails a generation. The txt2img answer, not
the progress flags, decides the outcome (a failed job stays "active" until the next one).
A cancelled or timed-out call interrupts the webui (``POST /sdapi/v1/interrupt``, global)
only if ``/internal/progress`` says our task is the one running; a task still queued, or a
webui without ``/internal/progress``, is abandoned (no API removes a queued task).
"""


from imagegate.backends.a1111.backend import A1111Backend
from imagegate.backends.a1111.progress import (
    TaskProgress,
    parse_global_progress,
    parse_internal_progress,
)
from imagegate.backends.a1111.wire import (
    BUILT_IN,
    DEFAULT_STEPS,
    A1111Settings,
    build_request,
    discovered_capabilities,
    from_env,
    parse_response,
)

__all__ = [
    "BUILT_IN",
    "DEFAULT_STEPS",
    "A1111Backend",
    "A1111Settings",
    "TaskProgress",
    "build_request",
    "discovered_capabilities",
    "from_env",
    "parse_global_progress",
    "parse_internal_progress",
    "parse_response",
]
