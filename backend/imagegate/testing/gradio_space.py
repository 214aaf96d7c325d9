"""A real Gradio app that stands in for a text-to-image Space, for tests and for users' tests.

Its parameter names differ from imagegate's on purpose (``text``, ``num_inference_steps``,
``w``, ``h``), so a backend's ``inputs`` mapping is exercised for real. Endpoints:

- ``/generate(text, negative, num_inference_steps, w, h, cfg, style)`` -> image (PNG)
- ``/generate_seed(text, seed, randomize_seed, w, h)`` -> (image, seed used)
- ``/gallery(text, count)`` -> a gallery of images
- ``/captioned(text)`` -> (caption, image, seed): the image is not the first output
- ``/fail(text, message)`` -> raises ``gr.Error(message)`` (try a ZeroGPU quota text)
- ``/slow(text, delay)`` -> sleeps ``delay`` seconds (async: a cancel stops it), then an image
- at ``{url}/busy-space``, a second Gradio app on the same server: ``/busy(text, delay)``,
  like ``/slow`` with ``concurrency_limit=1`` and a queue of ``queue_size`` (default 1)
  waiting events: with one call running and one waiting, the next gets "queue full"
- with ``replicas=True`` (``--replicas``), at ``{url}/replica/<name>``
  (``space.replicas[name]``), replicas of real Spaces' interfaces: ``flux-schnell``, ``sd3-medium``, ``sd3.5-large`` (``space_replicas.py``:
  their sliders' real ranges, a negative-prompt box with no value, WebP ``(image, seed)``)
- at ``{url}/progress-space``, a third: ``/steps`` (``gr.Progress`` steps behind a real
  one-at-a-time queue) and ``/steps_preview`` (a generator yielding previews); see
  ``gradio_progress.py``

Every call is recorded in ``SpaceCalls`` (in-process), so tests assert the arguments that
reached the app. Launch it on loopback in a background thread:

    with running_space() as space:      # space.url, space.busy_url, space.calls
        ...
    python -m imagegate.testing.gradio_space --port 7860
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import fastapi
import gradio as gr
import uvicorn
from PIL import Image

from imagegate.errors import listen_failed, port_number
from imagegate.testing.gradio_progress import build_progress_space
from imagegate.testing.images import make_image
from imagegate.testing.space_replicas import REPLICAS

__all__ = ["RunningSpace", "SpaceCalls", "build_space", "launch_space", "running_space"]

MAX_SEED = 2**31 - 1


@dataclass
class SpaceCalls:
    """What the app received: one ``(endpoint, arguments)`` per call, thread-safe."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, endpoint: str, **arguments: Any) -> None:
        with self._lock:
            self.calls.append((endpoint, arguments))

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count a call as in flight (``peak_in_flight`` is the most at once)."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    def last(self, endpoint: str) -> dict[str, Any]:
        with self._lock:
            for name, arguments in reversed(self.calls):
                if name == endpoint:
                    return arguments
        raise LookupError(f"no call to {endpoint} recorded")

    def count(self, endpoint: str) -> int:
        with self._lock:
            return sum(1 for name, _ in self.calls if name == endpoint)


def _image(w: float, h: float, text: str, seed: int = 0) -> Image.Image:
    img = Image.open(io.BytesIO(make_image(int(w), int(h), text, seed)))
    img.load()
    return img


def _endpoints(calls: SpaceCalls) -> dict[str, Any]:
    def generate(
        text: str,
        negative: str,
        num_inference_steps: float,
        w: float,
        h: float,
        cfg: float,
        style: str,
    ) -> Image.Image:
        calls.record(
            "/generate",
            text=text,
            negative=negative,
            num_inference_steps=num_inference_steps,
            w=w,
            h=h,
            cfg=cfg,
            style=style,
        )
        return _image(w, h, text)

    def generate_seed(
        text: str, seed: float, randomize_seed: bool, w: float, h: float
    ) -> tuple[Any, int]:
        used = random.randint(0, MAX_SEED) if randomize_seed else int(seed)
        calls.record(
            "/generate_seed", text=text, seed=seed, randomize_seed=randomize_seed, w=w, h=h
        )
        return _image(w, h, text, used), used

    def gallery(text: str, count: float) -> list[Image.Image]:
        calls.record("/gallery", text=text, count=count)
        return [_image(64, 64, text, i) for i in range(int(count))]

    def captioned(text: str) -> tuple[str, Image.Image, int]:
        calls.record("/captioned", text=text)
        return f"a picture of {text}", _image(64, 48, text, 7), 7

    def fail(text: str, message: str) -> Image.Image:
        calls.record("/fail", text=text, message=message)
        raise gr.Error(message, print_exception=False)

    async def slow(text: str, delay: float) -> Image.Image:
        calls.record("/slow", text=text, delay=delay)
        with calls.running():
            await asyncio.sleep(delay)
        return _image(64, 64, text)

    async def busy(text: str, delay: float) -> Image.Image:
        calls.record("/busy", text=text, delay=delay)
        await asyncio.sleep(delay)
        return _image(64, 64, text)

    return {
        "generate": generate,
        "generate_seed": generate_seed,
        "gallery": gallery,
        "captioned": captioned,
        "fail": fail,
        "slow": slow,
        "busy": busy,
    }


def build_space(calls: SpaceCalls | None = None) -> gr.Blocks:
    """The stand-in Space (every endpoint but ``/busy``), with an unbounded queue."""
    calls = calls or SpaceCalls()
    fns = _endpoints(calls)
    with gr.Blocks(title="imagegate stand-in Space") as demo:
        text = gr.Textbox(label="text")
        negative = gr.Textbox(label="negative", value="")
        steps = gr.Slider(1, 150, value=4, step=1, label="num_inference_steps")
        w, h = gr.Number(64, label="w", precision=0), gr.Number(64, label="h", precision=0)
        cfg = gr.Number(7.0, label="cfg")
        style = gr.Textbox(label="style", value="none")
        seed = gr.Number(0, label="seed", precision=0)
        randomize = gr.Checkbox(True, label="randomize_seed")
        count = gr.Number(2, label="count", precision=0)
        message = gr.Textbox(label="message", value="something broke")
        delay = gr.Number(1.0, label="delay")
        image = gr.Image(type="pil", format="png", label="image")
        seed_out = gr.Number(label="seed used", precision=0)
        caption = gr.Textbox(label="caption")
        pictures = gr.Gallery(label="pictures", format="png")
        go = gr.Button("go")
        go.click(
            fns["generate"],
            [text, negative, steps, w, h, cfg, style],
            image,
            api_name="generate",
            concurrency_limit=None,
        )
        go.click(
            fns["generate_seed"],
            [text, seed, randomize, w, h],
            [image, seed_out],
            api_name="generate_seed",
            concurrency_limit=None,
        )
        go.click(
            fns["gallery"], [text, count], pictures, api_name="gallery", concurrency_limit=None
        )
        go.click(
            fns["captioned"],
            [text],
            [caption, image, seed_out],
            api_name="captioned",
            concurrency_limit=None,
        )
        go.click(fns["fail"], [text, message], image, api_name="fail", concurrency_limit=None)
        go.click(fns["slow"], [text, delay], image, api_name="slow", concurrency_limit=None)
    demo.queue(max_size=None)
    return demo


def build_busy_space(calls: SpaceCalls | None = None, *, queue_size: int = 1) -> gr.Blocks:
    """``/busy``: one call at a time, ``queue_size`` more may wait, the next gets queue-full.

    A Blocks of its own because Gradio's queue ``max_size`` counts every waiting event of the
    app, and even an unlimited endpoint's event waits a moment before it starts.
    """
    fns = _endpoints(calls or SpaceCalls())
    with gr.Blocks(title="imagegate stand-in Space (busy)") as demo:
        text, delay = gr.Textbox(label="text"), gr.Number(1.0, label="delay")
        image = gr.Image(type="pil", format="png", label="image")
        gr.Button("go").click(
            fns["busy"], [text, delay], image, api_name="busy", concurrency_limit=1
        )
    demo.queue(max_size=queue_size)
    return demo


@dataclass
class RunningSpace:
    """A launched stand-in Space: its URL, the busy app's URL, its call record, a way to stop."""

    url: str
    busy_url: str
    calls: SpaceCalls
    server: uvicorn.Server
    thread: threading.Thread
    replicas: dict[str, str] = field(default_factory=dict)  # replica name -> its URL
    progress_url: str = ""

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def launch_space(
    *, host: str = "127.0.0.1", port: int = 0, queue_size: int = 1, replicas: bool = False
) -> RunningSpace:
    """Serve the stand-in at ``/``, the queue-limited ``/busy`` app at ``/busy-space`` and (with
    ``replicas``) the real Spaces' replicas at ``/replica/<name>`` on one uvicorn server, in a
    background thread; ``port=0`` takes a free one."""
    calls = SpaceCalls()
    app = fastapi.FastAPI()
    app = gr.mount_gradio_app(app, build_busy_space(calls, queue_size=queue_size), "/busy-space")
    for name, (_, build) in REPLICAS.items() if replicas else ():
        app = gr.mount_gradio_app(app, build(calls), f"/replica/{name}")
    app = gr.mount_gradio_app(app, build_progress_space(calls), "/progress-space")
    app = gr.mount_gradio_app(app, build_space(calls), "")
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="gradio-space", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the stand-in Space did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://{host}:{bound}"
    return RunningSpace(
        url=url, busy_url=f"{url}/busy-space", calls=calls, server=server, thread=thread,
        replicas={name: f"{url}/replica/{name}" for name in REPLICAS} if replicas else {},
        progress_url=f"{url}/progress-space",
    )


@contextlib.contextmanager
def running_space(**options: Any) -> Iterator[RunningSpace]:
    space = launch_space(**options)
    try:
        yield space
    finally:
        space.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagegate.testing.gradio_space",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0, help="TCP port (0: any free one)")
    parser.add_argument(
        "--queue-size", type=int, default=1, help="/busy's queue max_size (default 1)"
    )
    parser.add_argument(
        "--replicas", action="store_true", help="also serve the real Spaces' replicas"
    )
    args = parser.parse_args(argv)
    try:  # uvicorn would only log it from its thread: say it in one line, exit 2
        with socket.socket() as probe:
            probe.bind((args.host, args.port))
    except OSError as exc:
        print(f"{parser.prog}: {listen_failed(exc, args.host, args.port)}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):  # even when a shell started it with SIGINT ignored
        signal.signal(sig, signal.default_int_handler)
    space: RunningSpace | None = None
    try:  # a signal may come at any moment from here on, even while a line is printed
        space = launch_space(
            host=args.host, port=args.port, queue_size=args.queue_size, replicas=args.replicas
        )
        print(
            f"stand-in Space listening on {space.url} (queue-limited /busy: {space.busy_url})",
            flush=True,
        )
        for name, url in space.replicas.items():
            print(f"replica of {REPLICAS[name][0]}: {url}", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        if space is not None:
            space.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
