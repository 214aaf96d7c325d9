"""Replicas of real text-to-image Spaces' interfaces, built the way their public app.py builds
them, for tests that must meet what users meet.

Each replica is the Space's own ``gr.Blocks`` layout with a stand-in ``infer`` (no model: a
real image of the asked size from ``make_image``): the same components in the same order,
the same slider ranges, steps and initial values, a ``gr.Text`` with no initial value where
the Space has one (gradio then makes it a *required* API argument), ``gr.Image(label=
"Result", show_label=False)`` with no ``format=`` (gradio answers WebP), and ``gr.on(triggers=
[run_button.click, prompt.submit], fn=infer, ...)`` so that the API name is ``/infer`` and
the answer ``(image, seed)``. With gradio >= 5.39 the sliders refuse out-of-range values the
way the live Spaces do ("Value 128 is less than minimum value 256.").

Sources (no stored copy of any official app.py was found; these are copies of it, see
notes/gradio.md §1): FLUX.1-schnell from the official Space's PR branch refs/pr/176 and its
duplicates; SD3-medium from Spaces duplicated from the official one (sliders from a derivative
copy: UNCONFIRMED for the current official file); SD3.5-large from copies of its single
commit 6e5e1d5. The built-in table these are checked against is
``imagegate.backends.hf_space.spaces.INTERFACES``, written separately from these files.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from imagegate.testing.images import make_image

if TYPE_CHECKING:
    from imagegate.testing.gradio_space import SpaceCalls

__all__ = ["REPLICAS", "build_flux_schnell", "build_sd3_medium", "build_sd35_large"]

MAX_SEED = 2**31 - 1  # np.iinfo(np.int32).max in every one of these app.py files


def _picture(width: float, height: float, prompt: str, seed: int) -> Image.Image:
    img = Image.open(io.BytesIO(make_image(int(width), int(height), prompt, seed)))
    img.load()
    return img


def _seed(seed: float, randomize_seed: bool) -> int:
    return random.randint(0, MAX_SEED) if randomize_seed else int(seed)


def _prompt_row(title: str) -> tuple[gr.Text, gr.Button, gr.Image]:
    """The top of every one of these app.py files: title, prompt box, Run button, result."""
    gr.Markdown(f"# {title} (replica)")
    with gr.Row():
        prompt = gr.Text(label="Prompt", show_label=False, max_lines=1,
                         placeholder="Enter your prompt", container=False)
        run_button = gr.Button("Run", scale=0)
    return prompt, run_button, gr.Image(label="Result", show_label=False)


def build_flux_schnell(calls: SpaceCalls) -> gr.Blocks:
    """black-forest-labs/FLUX.1-schnell: infer(prompt, seed, randomize_seed, width, height,
    num_inference_steps) -> (image, seed); MAX_IMAGE_SIZE = 2048; guidance fixed at 0.0."""

    def infer(prompt: str, seed: float = 42, randomize_seed: bool = False, width: float = 1024,
              height: float = 1024, num_inference_steps: float = 4) -> tuple[Image.Image, int]:
        calls.record("flux-schnell", prompt=prompt, seed=seed, randomize_seed=randomize_seed,
                     width=width, height=height, num_inference_steps=num_inference_steps)
        used = _seed(seed, randomize_seed)
        return _picture(width, height, prompt, used), used

    with gr.Blocks() as demo, gr.Column():
        prompt, run_button, result = _prompt_row("FLUX.1 [schnell]")
        with gr.Accordion("Advanced Settings", open=False):
            seed = gr.Slider(label="Seed", minimum=0, maximum=MAX_SEED, step=1, value=0)
            randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
            with gr.Row():
                width = gr.Slider(label="Width", minimum=256, maximum=2048, step=32, value=1024)
                height = gr.Slider(label="Height", minimum=256, maximum=2048, step=32, value=1024)
            with gr.Row():
                num_inference_steps = gr.Slider(label="Number of inference steps", minimum=1,
                                                maximum=50, step=1, value=4)
        gr.on(triggers=[run_button.click, prompt.submit], fn=infer,
              inputs=[prompt, seed, randomize_seed, width, height, num_inference_steps],
              outputs=[result, seed])
    return demo


def _sd3(calls: SpaceCalls, *, name: str, size: tuple[int, int, int], guidance: tuple[float, float],
         steps: int, negative_visible: bool) -> gr.Blocks:
    """The Stability Spaces' shared layout: infer(prompt, negative_prompt, seed, randomize_seed,
    width, height, guidance_scale, num_inference_steps) -> (image, seed)."""
    lo, hi, step = size

    def infer(prompt: str, negative_prompt: str, seed: float, randomize_seed: bool, width: float,
              height: float, guidance_scale: float, num_inference_steps: float) -> tuple[Image.Image, int]:
        calls.record(name, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
                     randomize_seed=randomize_seed, width=width, height=height,
                     guidance_scale=guidance_scale, num_inference_steps=num_inference_steps)
        used = _seed(seed, randomize_seed)
        return _picture(width, height, prompt, used), used

    with gr.Blocks() as demo, gr.Column():
        prompt, run_button, result = _prompt_row(name)
        with gr.Accordion("Advanced Settings", open=False):
            negative_prompt = gr.Text(label="Negative prompt", max_lines=1,
                                      placeholder="Enter a negative prompt", visible=negative_visible)
            seed = gr.Slider(label="Seed", minimum=0, maximum=MAX_SEED, step=1, value=0)
            randomize_seed = gr.Checkbox(label="Randomize seed", value=True)
            with gr.Row():
                width = gr.Slider(label="Width", minimum=lo, maximum=hi, step=step, value=1024)
                height = gr.Slider(label="Height", minimum=lo, maximum=hi, step=step, value=1024)
            with gr.Row():
                guidance_scale = gr.Slider(label="Guidance scale", minimum=0.0, maximum=guidance[1],
                                           step=0.1, value=guidance[0])
                num_inference_steps = gr.Slider(label="Number of inference steps", minimum=1,
                                                maximum=50, step=1, value=steps)
        gr.on(triggers=[run_button.click, prompt.submit], fn=infer,
              inputs=[prompt, negative_prompt, seed, randomize_seed, width, height,
                      guidance_scale, num_inference_steps],
              outputs=[result, seed])
    return demo


def build_sd3_medium(calls: SpaceCalls) -> gr.Blocks:
    """stabilityai/stable-diffusion-3-medium: MAX_IMAGE_SIZE = 1344, sliders step 64,
    guidance 0..10 (5.0), 28 steps; a visible negative-prompt box with no value."""
    return _sd3(calls, name="sd3-medium", size=(256, 1344, 64), guidance=(5.0, 10.0), steps=28,
                negative_visible=True)


def build_sd35_large(calls: SpaceCalls) -> gr.Blocks:
    """stabilityai/stable-diffusion-3.5-large: sizes 512..1024 step 32, guidance 0..7.5 (4.5),
    40 steps; the negative-prompt box is hidden (visible=False) yet still a required input."""
    return _sd3(calls, name="sd3.5-large", size=(512, 1024, 32), guidance=(4.5, 7.5), steps=40,
                negative_visible=False)


# replica name (its mount path under /replica/) -> (the Space it copies, its builder)
REPLICAS: dict[str, tuple[str, Callable[[Any], gr.Blocks]]] = {
    "flux-schnell": ("black-forest-labs/FLUX.1-schnell", build_flux_schnell),
    "sd3-medium": ("stabilityai/stable-diffusion-3-medium", build_sd3_medium),
    "sd3.5-large": ("stabilityai/stable-diffusion-3.5-large", build_sd35_large),
}
