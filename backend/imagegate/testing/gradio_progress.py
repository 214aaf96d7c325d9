"""A stand-in Space that reports progress the way diffusers Spaces do: a real Gradio queue
(one job at a time), ``gr.Progress`` steps, and a generator that yields previews.

Mounted at ``{url}/progress-space`` by ``launch_space``. Endpoints:

- ``/steps(text, steps, step_s, w, h)`` -> image: ``steps`` tqdm steps of ``step_s`` seconds
  through ``gr.Progress(track_tqdm=True)``, in a worker thread like a diffusers pipeline (so
  a cancel frees the queue slot but the function runs on: gradio/queueing.py, observed in
  notes/gradio.md §6); ``concurrency_limit=1``: the next callers wait in the queue and see
  their rank, and an ETA once one job has finished.
- ``/steps_preview(text, steps, step_s, w, h)`` -> image: a generator yielding a small
  preview every ``max(1, steps // 4)`` steps and the full image last (status ITERATING;
  gradio_client's ``Job.outputs()`` grows with each yield). A cancel stops it after the
  current yield.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from imagegate.testing.images import make_image

__all__ = ["build_progress_space"]


def _image(w: float, h: float, text: str, seed: int = 0) -> Image.Image:
    img = Image.open(io.BytesIO(make_image(max(8, int(w)), max(8, int(h)), text, seed)))
    img.load()
    return img


def build_progress_space(calls: Any) -> gr.Blocks:
    """The progress Space; ``calls`` is the stand-in's SpaceCalls record."""

    def steps_fn(
        text: str, steps: float, step_s: float, w: float, h: float,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's idiom
    ) -> Image.Image:
        calls.record("/steps", text=text, steps=steps, step_s=step_s, w=w, h=h)
        with calls.running():
            for _ in progress.tqdm(range(int(steps)), desc="denoise", unit="steps"):
                time.sleep(step_s)
        return _image(w, h, text)

    def steps_preview(
        text: str, steps: float, step_s: float, w: float, h: float
    ) -> Iterator[Image.Image]:
        calls.record("/steps_preview", text=text, steps=steps, step_s=step_s, w=w, h=h)
        every = max(1, int(steps) // 4)
        for step in range(1, int(steps) + 1):
            time.sleep(step_s)
            if step % every == 0 and step < steps:
                yield _image(w // 4, h // 4, text, step)
        yield _image(w, h, text)

    with gr.Blocks(title="imagegate stand-in Space (progress)") as demo:
        text = gr.Textbox(label="text")
        steps = gr.Number(8, label="steps", precision=0)
        step_s = gr.Number(0.05, label="step_s")
        w, h = gr.Number(64, label="w", precision=0), gr.Number(64, label="h", precision=0)
        image = gr.Image(type="pil", format="png", label="image")
        go = gr.Button("go")
        go.click(steps_fn, [text, steps, step_s, w, h], image, api_name="steps", concurrency_limit=1)
        go.click(steps_preview, [text, steps, step_s, w, h], image, api_name="steps_preview",
                 concurrency_limit=1)
    demo.queue(max_size=None)
    return demo
