"""ComfyUI: a workflow queued through its API, followed over its websocket.

Wire facts (notes/providers_new.md §1; ComfyUI ``server.py`` [CS], ``execution.py`` [CE],
``main.py`` [CM], ``comfy_execution/progress.py`` [CP], ``protocol.py`` [CPR], ``nodes.py``
[CN], ``script_examples/basic_api_example.py`` [CX], at the commits listed there):

- ``POST /prompt`` ``{"prompt": <API-format graph>, "client_id", "prompt_id"?, "extra_data"}``
  -> ``{"prompt_id", "number", "node_errors": {}}``; a graph that fails validation is 400
  ``{"error": {"type", "message", "details", "extra_info"}, "node_errors": {<id>: {"errors":
  [...], "class_type"}}}`` (older: ``{"error": "no prompt", "node_errors": []}``). Newer
  servers take a client ``prompt_id`` (a canonical UUID); older ones mint their own [CS].
- ``GET /ws?clientId=<id>``: JSON frames ``{"type", "data"}`` (``status``,
  ``execution_start``, ``execution_cached``, ``executing`` (``node: null`` when the prompt is
  done, sent after its history is written [CM]), ``progress`` ``{value, max}``,
  ``executed``, ``execution_success``, ``execution_error``, ``execution_interrupted``) and
  binary preview frames ``[u32 1][u32 1=JPEG|2=PNG][image]``, or, after the client
  announces ``supports_preview_metadata``, ``[u32 4][u32 n][JSON with prompt_id][image]``.
  Only the socket of the prompt's ``client_id`` receives its messages [CS, CM].
- ``GET /history/{id}`` -> ``{}`` until done, then ``{id: {"outputs": {node: {"images":
  [{"filename", "subfolder", "type"}]}}, "status": {"status_str", "completed", "messages"}}}``;
  ``GET /view?filename=&subfolder=&type=`` serves an image.
- ``GET /queue`` -> ``{"queue_running": [[number, id, ...]], "queue_pending": [...]}``;
  ``POST /queue {"delete": [ids]}`` removes pending prompts; ``POST /interrupt`` stops the
  running prompt (newer: only if ``{"prompt_id"}`` names it; older: whatever runs).
- ``GET /system_stats`` (version, devices, VRAM); ``GET /object_info/{class}`` (a node's
  inputs; a combo's choices at ``input.required.<name>[0]``, or V3 ``["COMBO",
  {"options"}]``). No authentication of its own; no Origin header is sent (a mismatched one
  is 403 [CS ``create_origin_only_middleware``]).

Decided:

- The built-in workflow is [CX]'s txt2img graph (CheckpointLoaderSimple, CLIPTextEncode x2,
  EmptyLatentImage, KSampler, VAEDecode, SaveImage); ``model`` is the checkpoint
  (``ckpt_name``), else the first one the server lists. ``workflow = "file.json"`` (API
  format; relative to the config file) replaces it; ``inputs`` maps fields to
  ``"<node>.<input>"`` (or a list of them), the rest found by node class through the one
  KSampler's links (positive/negative CLIPTextEncode, latent, checkpoint through LoRA
  loaders). A field with no node input is not taken (the router drops it, saying so).
- The seed is always sent: the request's, else a random one (ComfyUI has no "random" and
  would serve a fixed seed from its cache). The caller's unset steps/guidance/sampler/
  negative prompt leave the workflow's own values.
- One websocket per backend instance, with its own ``client_id`` (``client_id`` in the
  config, else a random one per instance: two processes must not share one), opened before
  the first prompt; each prompt is posted with our own ``prompt_id``, watched before it can
  start. Progress, previews (``preview_method`` auto only when previews are wanted, else
  none) and the end come from the socket; ``/history`` is asked whenever it is quiet for
  ``poll_interval_s``, so a lost message costs at most that. A refused upgrade (a proxy
  without websockets) follows prompts through ``/history`` alone for a minute.
- Queue place: ``GET /queue`` when the prompt is queued and the queue changes (a ``status``
  message), only while someone listens.
- A cancelled or timed-out request: ``/interrupt`` with our prompt id only if ``/queue`` says
  it is running, else ``/queue {"delete"}`` (shielded, best effort).
- Capabilities: the fields the workflow has inputs for, the known nodes' ranges [CN], PNG;
  checkpoints and samplers read from ``/object_info`` of the mapped nodes' classes at each
  probe. Probe: ``GET /system_stats``.
"""

from imagegate.backends.comfyui.backend import ComfyUIBackend
from imagegate.backends.comfyui.wire import (
    HistoryEntry,
    Preview,
    capabilities_for,
    combo,
    decode_frame,
    error_from_response,
    parse_history,
    queue_place,
)
from imagegate.backends.comfyui.workflow import (
    BUILT_IN,
    FIELDS,
    ComfyUISettings,
    build_prompt,
    find_targets,
    from_env,
    load_workflow,
)

__all__ = [
    "BUILT_IN",
    "FIELDS",
    "ComfyUIBackend",
    "ComfyUISettings",
    "HistoryEntry",
    "Preview",
    "build_prompt",
    "capabilities_for",
    "combo",
    "decode_frame",
    "error_from_response",
    "find_targets",
    "from_env",
    "load_workflow",
    "parse_history",
    "queue_place",
]
