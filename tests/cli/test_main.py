"""The ``imagegate`` command, run as a real subprocess against the A1111 emulator.

The emulator runs in this test's event loop, so the CLI is started with
``asyncio.create_subprocess_exec`` and awaited (a blocking ``subprocess.run`` would starve it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from imagegate.backends.registry import REGISTRY
from imagegate.testing import Knobs
from PIL import Image

# Variables that would configure other backends from the environment alone.
PROVIDER_VARS = (
    "A1111_URL",
    "IMAGEGATE_CONFIG",
    "NOVITA_API_KEY",
    "STABILITY_API_KEY",
    "HF_TOKEN",
    "HF_SPACES",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    *REGISTRY.env_variables,  # every kind's own (COMFYUI_URL, FAL_KEY, ...)
)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    wall_s: float


async def imagegate(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``python -m imagegate ARGS`` with a clean provider environment plus ``env``."""
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    environ.update(env or {})
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegate",
        *args,
        cwd=cwd,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=45)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode(), time.monotonic() - start)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr


LIGHTHOUSE = ("generate", "a lighthouse at dusk", "--width", "512", "--height", "768", "--seed", "7")


async def test_generate_json_prints_one_object_and_writes_the_png(
    a1111_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = await imagegate(*LIGHTHOUSE, "--json", "--out", str(out), cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert run.code == 0, run.stderr
    assert_no_traceback(run)
    assert run.stdout.count("\n") == 1 and run.stdout.endswith("}\n")  # exactly one JSON line
    doc = json.loads(run.stdout)
    assert set(doc) == {"backend", "elapsed_s", "images", "attempts", "adjustments"}
    assert doc["backend"] == "a1111" and isinstance(doc["elapsed_s"], float)
    (image,) = doc["images"]
    assert set(image) == {"path", "width", "height", "format", "seed"}
    assert (image["width"], image["height"], image["format"], image["seed"]) == (512, 768, "png", 7)
    (attempt,) = doc["attempts"]
    assert set(attempt) == {"backend", "outcome", "elapsed_s", "error"}
    assert (attempt["backend"], attempt["outcome"], attempt["error"]) == ("a1111", "ok", None)
    path = Path(image["path"])
    if not path.is_absolute():
        path = tmp_path / path
    assert path.is_relative_to(out) and path.suffix == ".png"
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (512, 768)
        parameters = img.info["parameters"]
    assert parameters.startswith("a lighthouse at dusk\n")
    assert "Seed: 7" in parameters and "Size: 512x768" in parameters and "Backend: a1111" in parameters


async def test_generate_without_json_prints_path_backend_and_time(
    a1111_url: str, tmp_path: Path
) -> None:
    run = await imagegate(
        "generate", "a cat", "--width", "64", "--height", "64", "--out", "imgs",
        cwd=tmp_path, env={"A1111_URL": a1111_url},
    )
    assert run.code == 0, run.stderr
    first, second = run.stdout.splitlines()
    path = tmp_path / first.split()[0]
    assert path.is_file() and path.is_relative_to(tmp_path / "imgs")
    assert "(64x64 png, seed " in first
    assert re.fullmatch(r"backend: a1111  time: \d+\.\d\d s", second)


async def test_invalid_width_exits_2_naming_field_and_range_before_any_network_call(
    a1111_url: str, knobs: Knobs, tmp_path: Path
) -> None:
    run = await imagegate("generate", "a cat", "--width", "4000", cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert run.code == 2
    assert_no_traceback(run)
    assert "width" in run.stderr and "64..2048" in run.stderr and "4000" in run.stderr
    assert run.stdout == ""
    assert knobs.requests == []  # nothing was sent


async def test_broken_config_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[[backend]]\nname = "x"\nkind = "midjourney"\n')
    run = await imagegate("generate", "a cat", "--config", str(config), cwd=tmp_path)
    assert run.code == 2
    assert_no_traceback(run)
    assert str(config) in run.stderr and "key 'kind'" in run.stderr


async def test_toml_syntax_error_via_imagegate_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "syntax.toml"
    config.write_text("[[backend]\n")
    run = await imagegate("generate", "a cat", cwd=tmp_path, env={"IMAGEGATE_CONFIG": str(config)})
    assert run.code == 2
    assert_no_traceback(run)
    assert str(config) in run.stderr and "not valid TOML" in run.stderr


async def test_unknown_backend_name_exits_2(a1111_url: str, tmp_path: Path) -> None:
    run = await imagegate(
        "generate", "a cat", "--backend", "nope", cwd=tmp_path, env={"A1111_URL": a1111_url}
    )
    assert run.code == 2
    assert_no_traceback(run)
    assert "'nope'" in run.stderr and "a1111" in run.stderr


async def test_backend_down_exits_3_with_the_attempt_trail(tmp_path: Path) -> None:
    run = await imagegate("generate", "a cat", cwd=tmp_path, env={"A1111_URL": closed_port_url()})
    assert run.code == 3
    assert_no_traceback(run)
    assert "no backend produced an image" in run.stderr
    assert re.search(r"a1111: connect_failed after \d+\.\d\d s: connection refused", run.stderr)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.png"))


async def test_backend_down_with_json_prints_one_failure_object(tmp_path: Path) -> None:
    run = await imagegate(
        "generate", "a cat", "--json", cwd=tmp_path, env={"A1111_URL": closed_port_url()}
    )
    assert run.code == 3
    assert run.stdout.count("\n") == 1
    doc = json.loads(run.stdout)
    assert doc["error"]["kind"] == "all_backends_failed"
    attempts = doc["attempts"]  # the router may retry a refused port (a server starting up)
    assert attempts
    for attempt in attempts:
        assert (attempt["backend"], attempt["outcome"]) == ("a1111", "connect_failed")
        assert "refused" in attempt["error"]


async def test_backends_command_probes_and_reports_json(a1111_url: str, tmp_path: Path) -> None:
    run = await imagegate("backends", "--json", cwd=tmp_path, env={"A1111_URL": a1111_url})
    assert run.code == 0, run.stderr
    (health,) = json.loads(run.stdout)
    assert (health["name"], health["kind"], health["ok"]) == ("a1111", "a1111", True)


async def test_backends_command_exits_1_when_nothing_answers(tmp_path: Path) -> None:
    run = await imagegate("backends", cwd=tmp_path, env={"A1111_URL": closed_port_url()})
    assert run.code == 1
    assert_no_traceback(run)
    assert "connect_failed" in run.stdout
    assert "open" in run.stdout  # a refused port trips the breaker, and the table says so


async def test_emulator_module_starts_on_port_0_and_prints_its_url(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate.testing.a1111", "--port", "0",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        assert int(match.group(1)) > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(match.group(0) + "/sdapi/v1/progress") as resp,
        ):
            assert resp.status == 200
    finally:
        proc.kill()
        await proc.wait()
