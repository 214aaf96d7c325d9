"""``imagegate diagnose`` on Spaces: the Hub's runtime record in each stage (the Hub emulator),
a real Gradio app's endpoint list and a parameter mismatch (the Gradio stand-in Space), one real
generation through the Space backend, and ``scripts/diagnose_spaces.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from imagegate.backends.registry import load_settings
from imagegate.diagnose.report import Report
from imagegate.diagnose.run import diagnose
from imagegate.diagnose.space import params_step, runtime_step
from imagegate.testing import serve_app
from imagegate.testing.hub import HubState
from imagegate.testing.hub import create_app as hub_app

from tests.conftest import _toml, write_config

REPO = Path(__file__).resolve().parents[2]
GOOD_TOKEN = "hf_good_token_0123456789"
STAND_IN_INPUTS = {"prompt": "text", "steps": "num_inference_steps", "width": "w", "height": "h"}


@pytest.fixture(scope="module")
def gradio_url() -> Iterator[str]:
    """The real Gradio stand-in Space: /generate(text, negative, num_inference_steps, w, h, ...)."""
    gradio_space = pytest.importorskip("imagegate.testing.gradio_space")
    with gradio_space.running_space() as space:
        yield space.url


@pytest.fixture
async def hub() -> AsyncIterator[tuple[str, HubState]]:
    state = HubState(token=GOOD_TOKEN)
    async with serve_app(hub_app(hub=state)) as url:
        yield url, state


def space_settings(tmp_path: Path, backends: list[dict[str, Any]], environ: dict[str, str] | None = None) -> Any:
    lines = []
    for b in backends:
        lines.append("[[backend]]")
        lines += [f"{k} = {_toml(v)}" for k, v in b.items() if not isinstance(v, dict)]
        for k, v in b.items():
            if isinstance(v, dict):
                lines += [f"[backend.{k}]", *(f"{kk} = {_toml(vv)}" for kk, vv in v.items())]
    path = write_config(tmp_path, "\n".join(lines) + "\n")
    return load_settings(path, environ=environ or {}, dotenv=False, require_secrets=False)


def steps(report: Report, name: str) -> dict[str, Any]:
    (b,) = [b for b in report.backends if b.name == name]
    return {s.name: s for s in b.steps}


async def test_running_space_with_matching_inputs_is_ok(hub: Any, gradio_url: str, tmp_path: Path) -> None:
    hub_url, state = hub
    state.set_space("owner/app", stage="RUNNING", hardware="zero-a10g")
    s = space_settings(tmp_path, [{"name": "app", "kind": "hf_space", "space": "owner/app", "src": gradio_url,
                                   "hub_url": hub_url, "api_name": "/generate", "inputs": STAND_IN_INPUTS}])
    report = await diagnose(s, timeout=5)
    st = steps(report, "app")
    assert list(st) == ["dns", "tcp", "tls", "http", "auth", "runtime", "gradio_api", "params"]
    assert report.backends[0].verdict == "ok", report.to_json()
    assert st["runtime"].data["stage"] == "RUNNING" and st["runtime"].data["hardware"] == "zero-a10g"
    assert "/generate" in st["gradio_api"].data["endpoints"] and st["gradio_api"].data["api_prefix"] == "/gradio_api"
    assert st["http"].data["status"] == 200 and st["http"].data["url"].endswith("/api/spaces/owner/app/runtime")
    assert st["auth"].data["result"] == "none"


async def test_parameter_mismatch_names_the_spaces_real_parameters(gradio_url: str, tmp_path: Path) -> None:
    inputs = {"prompt": "prompt", "steps": "steps"}  # FLUX-style names; the app says text, num_inference_steps
    s = space_settings(tmp_path, [{"name": "app", "kind": "hf_space", "src": gradio_url, "api_name": "/generate",
                                   "inputs": inputs, "fixed": {"guidance": 3.5}}])
    report = await diagnose(s, timeout=5)
    st = steps(report, "app")
    assert st["runtime"].status == "skip" and "not a Hub Space" in st["runtime"].detail
    assert st["params"].code == "param_mismatch"
    assert st["params"].data["params"] == ["text", "negative", "num_inference_steps", "w", "h", "cfg", "style"]
    (advice,) = report.backends[0].advice()
    assert "takes: text, negative, num_inference_steps, w, h, cfg, style" in advice["advice"]
    assert "inputs.steps = 'steps'" in advice["advice"] and "fixed.guidance" in advice["advice"]
    assert "'text' has no default" in advice["advice"]
    assert report.backends[0].verdict == "down"


async def test_unknown_api_name_lists_the_endpoints(gradio_url: str, tmp_path: Path) -> None:
    s = space_settings(tmp_path, [{"name": "app", "kind": "hf_space", "src": gradio_url, "api_name": "/infer"}])
    report = await diagnose(s, timeout=5)
    (advice,) = report.backends[0].advice()
    assert advice["code"] == "api_name_missing" and "/generate_seed" in advice["advice"]


async def test_generate_through_the_space_backend(gradio_url: str, tmp_path: Path) -> None:
    s = space_settings(tmp_path, [{"name": "app", "kind": "hf_space", "src": gradio_url, "api_name": "/generate",
                                   "inputs": STAND_IN_INPUTS}])
    report = await diagnose(s, timeout=5, generate=True)
    gen = steps(report, "app")["generate"]
    assert gen.status == "ok", gen.detail
    assert (gen.data["width"], gen.data["height"]) == (256, 256)


@pytest.mark.parametrize(
    ("stage", "status", "code"),
    [
        ("SLEEPING", "warn", "space_sleeping"),
        ("STOPPED", "warn", "space_sleeping"),
        ("BUILDING", "warn", "space_starting"),
        ("APP_STARTING", "warn", "space_starting"),
        ("PAUSED", "fail", "space_paused"),
        ("BUILD_ERROR", "fail", "space_broken"),
        ("RUNTIME_ERROR", "fail", "space_broken"),
        ("CONFIG_ERROR", "fail", "space_broken"),
        ("NO_APP_FILE", "fail", "space_broken"),
    ],
)
async def test_space_stage_gives_verdict_and_advice(hub: Any, tmp_path: Path, stage: str, status: str, code: str) -> None:
    hub_url, state = hub
    state.set_space("owner/s", stage=stage)
    s = space_settings(tmp_path, [{"name": "s", "kind": "hf_space", "space": "owner/s", "hub_url": hub_url}])
    report = await diagnose(s, timeout=2)
    st = steps(report, "s")
    assert (st["runtime"].status, st["runtime"].code) == (status, code)
    assert st["gradio_api"].status == "skip" and stage in st["gradio_api"].detail  # the app is not woken
    assert report.backends[0].verdict == ("degraded" if status == "warn" else "down")
    if stage == "SLEEPING":
        assert "cold start takes minutes" in report.backends[0].advice()[0]["advice"]


async def test_unknown_space_is_not_found(hub: Any, tmp_path: Path) -> None:
    hub_url, _ = hub
    s = space_settings(tmp_path, [{"name": "s", "kind": "hf_space", "space": "owner/missing", "hub_url": hub_url}])
    report = await diagnose(s, timeout=2)
    assert steps(report, "s")["runtime"].code == "space_not_found"


async def test_private_space_without_token_asks_for_hf_token(hub: Any, tmp_path: Path) -> None:
    hub_url, state = hub
    state.set_space("owner/s", stage="RUNNING", private=True)
    s = space_settings(tmp_path, [{"name": "s", "kind": "hf_space", "space": "owner/s", "hub_url": hub_url}])
    report = await diagnose(s, timeout=2)
    assert steps(report, "s")["auth"].code == "auth_missing"
    assert "set HF_TOKEN" in report.backends[0].advice()[0]["advice"]


async def test_rejected_hf_token_says_hf_token(hub: Any, tmp_path: Path) -> None:
    hub_url, state = hub
    state.set_space("owner/s", stage="RUNNING", private=True)
    s = space_settings(tmp_path, [{"name": "s", "kind": "hf_space", "space": "owner/s", "hub_url": hub_url}],
                       environ={"HF_TOKEN": "hf_revoked_token_abcd"})
    report = await diagnose(s, timeout=2)
    st = steps(report, "s")
    assert st["auth"].code == "auth_rejected" and st["auth"].data["last4"] == "abcd"
    assert "the key in HF_TOKEN was rejected" in report.backends[0].advice()[0]["advice"]
    assert st["runtime"].status == "skip"
    assert "hf_revoked_token" not in json.dumps(report.to_json(secrets=["hf_revoked_token_abcd"]))


def test_runtime_step_of_an_unknown_stage_warns() -> None:
    step = runtime_step("o/s", {"stage": "MIGRATING", "hardware": {"current": None, "requested": "t4-small"}}, 0.1)
    assert step.status == "warn" and "t4-small" in step.detail and "does not know" in step.detail


def test_params_step_needs_required_parameters() -> None:
    info = {"named_endpoints": {"/run": {"parameters": [
        {"parameter_name": "text", "parameter_has_default": False},
        {"parameter_name": "size", "parameter_has_default": True}],
        "returns": [{"component": "Image"}]}}}
    step = params_step(info, None, {"prompt": "prompt"}, {})
    assert step.data["api_name"] == "/run"  # no api_name: the first endpoint returning an image
    assert step.code == "param_mismatch"
    assert any("'text' has no default" in p for p in step.data["problems"])
    assert params_step(info, "/run", {"prompt": "text"}, {"size": 5}).status == "ok"


async def run_script(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_SPACES", "IMAGEGATE_HUB_URL")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "scripts" / "diagnose_spaces.py"), *args, env={**base, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_script_diagnoses_spaces_named_on_the_command_line(hub: Any) -> None:
    hub_url, state = hub
    state.set_space("owner/asleep", stage="SLEEPING")
    state.set_space("owner/paused", stage="PAUSED")
    code, out, err = await run_script(["--json", "--timeout", "5", "owner/asleep", "owner/paused"],
                                      env={"IMAGEGATE_HUB_URL": hub_url, "PYTHONIOENCODING": "ascii"})
    assert code == 1, err  # none is ok
    doc = json.loads(out)
    verdicts = {b["target"]: b["verdict"] for b in doc["backends"]}
    assert verdicts == {"owner/asleep": "degraded", "owner/paused": "down"}


async def test_script_diagnoses_configured_spaces_on_the_given_hub(hub: Any, gradio_url: str, tmp_path: Path) -> None:
    hub_url, state = hub
    state.set_space("owner/app", stage="RUNNING")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[backend]]\nname = "local"\nkind = "a1111"\nbase_url = "http://127.0.0.1:9"\n'
        f'[[backend]]\nname = "app"\nkind = "hf_space"\nspace = "owner/app"\nsrc = "{gradio_url}"\n'
        'hub_url = "https://hub.invalid"\napi_name = "/generate"\n[backend.inputs]\nprompt = "text"\n'
    )
    code, out, err = await run_script(["--config", str(cfg), "--hub-url", hub_url], env={"PYTHONIOENCODING": "cp1252"})
    assert code == 0, out + err
    assert "Traceback" not in err and "local" not in out  # only the Spaces
    assert "app (hf_space) owner/app  -> OK" in out and "RUNNING" in out


async def test_script_rejects_a_malformed_space_id() -> None:
    code, _, err = await run_script(["not-a-space-id"], env={"IMAGEGATE_HUB_URL": "http://127.0.0.1:9"})
    assert code == 2 and "not-a-space-id" in err and "Traceback" not in err
