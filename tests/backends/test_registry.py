"""The provider registry: every row is whole (settings, backend, emulator, env builder), and
config, the emulator command and diagnose derive from it."""

from __future__ import annotations

import importlib
import typing

import pytest
from imagegate.backends.base import ImageBackend
from imagegate.backends.registry import KINDS, PROVIDERS, REGISTRY, backend_class, load_settings
from imagegate.errors import ConfigError
from imagegate.testing.cli import EMULATORS


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.kind)
def test_every_row_names_a_settings_class_of_its_kind_a_backend_and_an_emulator(provider: typing.Any) -> None:
    kind_field = provider.settings.model_fields["kind"]
    assert typing.get_args(kind_field.annotation) == (provider.kind,)
    cls = backend_class(provider.kind)
    assert issubclass(cls, ImageBackend) and cls.kind == provider.kind
    module = importlib.import_module(provider.emulator)
    assert hasattr(module, "create_app") or hasattr(module, "main")
    assert EMULATORS[provider.kind] == provider.emulator
    assert provider.smallest_side >= 64


def test_kinds_are_the_rows_in_order() -> None:
    assert KINDS == tuple(p.kind for p in PROVIDERS) == REGISTRY.kinds
    with pytest.raises(ConfigError, match="unknown kind 'acme'"):
        REGISTRY["acme"]


def test_environment_alone_configures_each_kind_in_priority_order() -> None:
    env = {
        "A1111_URL": "http://127.0.0.1:7860",
        "NOVITA_API_KEY": "nk-123456789012",
        "STABILITY_API_KEY": "sk-123456789012",
        "HF_TOKEN": "hf_1234567890123",
        "OPENAI_BASE_URL": "http://127.0.0.1:9000/v1",
        "COMFYUI_URL": "http://127.0.0.1:8188",
        "FAL_KEY": "fal-id:fal-secret-1234",
        "REPLICATE_API_TOKEN": "r8_123456789012",
        "TOGETHER_API_KEY": "tg-123456789012",
    }
    settings = load_settings(environ=env, dotenv=False)
    assert [b.kind for b in settings.backends] == [
        "a1111", "comfyui", "novita", "stability", "fal", "replicate", "hf_inference", "together", "openai",
    ]
    assert settings.source == "environment"


@pytest.mark.parametrize("var", ["COMFYUI_URL", "FAL_KEY", "REPLICATE_API_TOKEN", "TOGETHER_API_KEY"])
def test_each_new_kinds_variable_alone_configures_it_and_no_public_space(var: str) -> None:
    value = "http://127.0.0.1:8188" if var.endswith("_URL") else "key-123456789012"
    settings = load_settings(environ={var: value}, dotenv=False)
    assert [b.kind for b in settings.backends] == [
        {"COMFYUI_URL": "comfyui", "FAL_KEY": "fal", "REPLICATE_API_TOKEN": "replicate",
         "TOGETHER_API_KEY": "together"}[var]
    ]


def test_public_spaces_are_the_default_only_when_nothing_else_is_configured() -> None:
    alone = load_settings(environ={}, dotenv=False)
    assert {b.kind for b in alone.backends} == {"hf_space"}
    with_local = load_settings(environ={"A1111_URL": "http://127.0.0.1:7860"}, dotenv=False)
    assert [b.kind for b in with_local.backends] == ["a1111"]
