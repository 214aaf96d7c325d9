"""``imagegate diagnose`` for ComfyUI, fal, Replicate and Together: each one's free probe as the
http step, its credentials judged, one real generation, against the emulators on loopback."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imagegate.backends.registry import load_settings
from imagegate.diagnose.render import write_report
from imagegate.diagnose.run import diagnose
from imagegate.testing import comfyui as comfyui_emulator
from imagegate.testing import fal as fal_emulator
from imagegate.testing import replicate as replicate_emulator
from imagegate.testing import serve_app
from imagegate.testing import together as together_emulator

from tests.conftest import write_config

KEYS = {"FAL_KEY": "fal-id:fal-secret-0042", "REPLICATE_API_TOKEN": "r8_0123456789abcdef",
        "TOGETHER_API_KEY": "tg-0123456789abcdef"}


@pytest.fixture
async def config(tmp_path: Path) -> AsyncIterator[Path]:
    async with (
        serve_app(comfyui_emulator.create_app()) as comfy,
        serve_app(fal_emulator.create_app(api_key=KEYS["FAL_KEY"])) as fal,
        serve_app(replicate_emulator.create_app(api_key=KEYS["REPLICATE_API_TOKEN"])) as replicate,
        serve_app(together_emulator.create_app(api_key=KEYS["TOGETHER_API_KEY"])) as together,
    ):
        yield write_config(tmp_path, "".join(
            f'[[backend]]\nname = "{kind}"\nkind = "{kind}"\nbase_url = "{url}"\n'
            for kind, url in (("comfyui", comfy), ("fal", fal), ("replicate", replicate), ("together", together))
        ))


async def test_each_new_kind_is_diagnosed_ok_with_its_own_probe_and_a_generation(config: Path) -> None:
    report = await diagnose(load_settings(config, environ=KEYS, dotenv=False), generate=True, timeout=5)
    out = io.StringIO()
    write_report(report, out, as_json=False, secrets=list(KEYS.values()))
    text = out.getvalue()
    assert [(b.name, b.verdict) for b in report.backends] == [
        ("comfyui", "ok"), ("fal", "ok"), ("replicate", "ok"), ("together", "ok")], text
    for probe in ("GET /system_stats -> HTTP 200", "/status -> HTTP 404", "GET /v1/account -> HTTP 200",
                  "GET /v1/models -> HTTP 200"):
        assert probe in text
    assert "accepted: FAL_KEY" in text and "none configured; none were asked for" in text
    assert not any(key in text for key in KEYS.values())


async def test_a_refused_fal_key_is_auth_rejected_with_its_advice(config: Path) -> None:
    wrong = {**KEYS, "FAL_KEY": "fal-id:someone-elses"}
    report = await diagnose(load_settings(config, environ=wrong, dotenv=False), names=["fal"], timeout=5)
    out = io.StringIO()
    write_report(report, out, as_json=False, secrets=list(wrong.values()))
    (backend,) = report.backends
    assert backend.verdict == "down"
    assert "rejected (HTTP 401)" in out.getvalue() and "the key in FAL_KEY was rejected" in out.getvalue()
