"""The ``hf_space`` kind's settings and its environment-only set-up (no gradio_client here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator

from imagegate.backends.hf_space.spaces import space_backend_tables, space_host
from imagegate.config import BackendSettings, check_url

__all__ = ["SPACE_INPUT_FIELDS", "HFSpaceSettings", "from_env"]

# ImageRequest fields a Space's parameters can be mapped from (HFSpaceSettings.inputs keys).
SPACE_INPUT_FIELDS = (
    "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "sampler", "model",
)


class HFSpaceSettings(BackendSettings):
    """A Hugging Face Space (or any Gradio app) reached through gradio_client."""

    kind: Literal["hf_space"] = "hf_space"
    space: str | None = Field(default=None, pattern=r"^[\w.\-]+/[\w.\-]+$")
    src: str | None = None
    hub_url: str = "https://huggingface.co"
    api_name: str | None = None
    inputs: dict[str, str] = Field(default_factory=lambda: {"prompt": "prompt"})
    fixed: dict[str, Any] = Field(default_factory=dict)
    token_env: str = "HF_TOKEN"
    connect_timeout_s: float = Field(default=30.0, gt=0, le=600)
    read_timeout_s: float = Field(default=300.0, gt=0, le=3600)
    max_concurrency: int = Field(default=2, ge=1, le=64)
    wake_up: bool = False

    _src = field_validator("src", "hub_url")(classmethod(lambda cls, v: check_url(v)))

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(SPACE_INPUT_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown request field {unknown[0]!r} (known: {', '.join(SPACE_INPUT_FIELDS)})"
            )
        if "prompt" not in value:
            raise ValueError("must map 'prompt' to the Space's prompt parameter")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if self.space is None and self.src is None:
            raise ValueError(
                "set 'space' (owner/name) or 'src' (a URL), or both: 'src' then serves the "
                "Gradio calls and 'space' the Hub runtime check"
            )
        clash = sorted(set(self.inputs.values()) & set(self.fixed))
        if clash:
            raise ValueError(f"parameter {clash[0]!r} is set by both 'inputs' and 'fixed'")

    @property
    def endpoint(self) -> str:
        """The Hub for a hub Space (its runtime is checked first), else the app itself."""
        return self.hub_url if self.space else str(self.src)

    @property
    def app_url(self) -> str:
        """Where the Gradio calls go: ``src`` when set, else the Space's own host."""
        return self.src or space_host(str(self.space))

    def secret_env_names(self) -> dict[str, str]:
        return {"token": self.token_env}


def from_env(env: Mapping[str, str], have_others: bool) -> list[dict[str, Any]]:
    """``HF_SPACES="owner/a,owner/b"``; with no other backend configured at all, the built-in
    public Spaces (the zero-key default)."""
    return space_backend_tables(env.get("HF_SPACES"), have_others=have_others)
