"""Replicate predictions: ``Prefer: wait``, then polling, cancel; inputs read from the model's schema.

Wire facts (notes/providers_new.md §3: replicate-python @0110c2c5 [RP], replicate-python-beta
@48e138a1 [RB], Replicate's changelog and rate-limit docs):

- ``Authorization: Bearer <token>``. ``POST /v1/models/{owner}/{name}/predictions`` (official
  models) or ``POST /v1/predictions`` with ``{"version": "<64 hex>"}``; body ``{"input": {...}}``.
  ``Prefer: wait=N`` (N 1..60) holds the answer until the prediction ends or N seconds pass;
  what comes back may still be ``starting`` or ``processing`` and must be polled [RP
  ``run.py``]. The prediction: ``{"id", "status": starting|processing|succeeded|failed|
  canceled, "output", "error", "logs", "urls": {"get", "cancel", "stream"?, "web"}}``.
- ``GET {urls.get}`` polls; ``POST {urls.cancel}`` cancels and answers the prediction.
- Output files are URLs on ``replicate.delivery`` (or ``data:`` URIs) [RP ``FileOutput``].
- Errors are problem details ``{"title", "detail", "status"}``; 422 adds ``invalid_fields``
  (changelog 2024-05-01); 429 ``{"detail": "Request was throttled. ..."}`` with Retry-After.
- ``GET /v1/models/{owner}/{name}`` carries ``latest_version.openapi_schema``, and
  ``GET /v1/models/{owner}/{name}/versions/{id}`` a version's ``openapi_schema``: the model's
  inputs at ``components.schemas.Input`` (an enum may sit behind ``allOf: [{"$ref"}]``, as
  cog writes them). ``GET /v1/account`` -> ``{"type", "username", "name"}``: free.

Decided:

- ``model`` is ``owner/name`` (an official model's own route) or ``owner/name:version`` (the
  version route); the default is black-forest-labs/flux-schnell.
- The model's schema decides what is sent (:mod:`.inputs`): read
  once per probe (free GETs), and before the first generation when no probe ran yet; until
  then flux-schnell's known schema, or for another model the common SD names sent when set.
- ``Prefer: wait=N`` with N = ``wait_s`` (default 60) but at most 1 s short of the caller's
  deadline and of ``read_timeout_s``, so the answer (with the prediction's id) always
  arrives; then ``urls.get`` every ``poll_interval_s`` within ``read_timeout_s`` of the
  submission and the deadline. The ``urls`` the answer names are used when they have
  ``base_url``'s origin (the token goes with them), else ``/v1/predictions/{id}`` on
  ``base_url``.
- Progress (while someone listens): ``starting`` (a cold model booting) -> queued;
  ``processing`` -> progress, step/steps from the logs' last tqdm bar [RP ``Progress``].
- A cancelled or timed-out request cancels its prediction (shielded, best effort).
- ``failed``: an error naming NSFW -> content_filtered; otherwise server_error, with
  Replicate's error text. ``canceled`` (by someone else) -> server_error.
- Outputs are downloaded without the token (another host) under the download policy, at most
  ``n`` of them; the seed is read from a ``Using seed: N`` log line when the model prints one.
"""

from imagegate.backends.replicate.backend import (
    ModelRef,
    Prediction,
    ReplicateBackend,
    ReplicateSettings,
    error_from_response,
    from_env,
    parse_prediction,
    prediction_error,
)
from imagegate.backends.replicate.inputs import (
    FLUX_SCHNELL,
    InputSchema,
    build_input,
    capabilities_from,
    nearest_ratio,
    parse_schema,
)

__all__ = [
    "FLUX_SCHNELL",
    "InputSchema",
    "ModelRef",
    "Prediction",
    "ReplicateBackend",
    "ReplicateSettings",
    "build_input",
    "capabilities_from",
    "error_from_response",
    "from_env",
    "nearest_ratio",
    "parse_prediction",
    "parse_schema",
    "prediction_error",
]
