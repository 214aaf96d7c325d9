"""``imagegate generate`` while it waits: the live line on a terminal (a real pty) and
``--events`` JSON lines, against a slow A1111 emulator; and the line's wording."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from imagegate.cli.live import LiveLine, Status, describe, ordinal
from imagegate.events import FailoverEvent, ProgressEvent, QueuedEvent, StartedEvent
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing import serve_app
from imagegate.testing.a1111_webui import Webui

from tests.cli.test_main import PROVIDER_VARS, imagegate


@pytest.fixture
async def slow_url() -> AsyncIterator[str]:
    async with serve_app(a1111_emulator.create_app(webui=Webui(step_s=0.03))) as url:
        yield url


def test_the_line_names_backend_queue_place_percent_eta_and_failovers() -> None:
    status = Status()
    status.update(StartedEvent(backend="flux", attempt=1))
    status.update(QueuedEvent(backend="flux", position=3, queue_size=5, eta_s=20))
    assert describe(status, 12.4) == "trying flux · queued 3rd of 5 · ETA 20 s · 12.4 s"
    status.update(FailoverEvent(from_="flux", to="a1111", reason="x", error_kind="handshake_timeout"))
    status.update(StartedEvent(backend="a1111", attempt=2))
    status.update(ProgressEvent(fraction=0.42, step=21, steps=50, eta_s=3.2))
    assert describe(status, 14) == (
        "failing over to a1111 (flux: handshake_timeout) · 42% (step 21/50) · ETA 3 s · 14.0 s"
    )
    status.update(FailoverEvent(from_="a1111", to="novita", reason="slow", hedge=True))
    status.update(FailoverEvent(from_="a1111", to="novita", reason="rejected"))
    assert describe(status, 15).endswith("· 3 failovers · 15.0 s")
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]


def test_the_live_line_redraws_in_place() -> None:
    out = io.StringIO()
    line = LiveLine(out, clock=lambda: 0.0)
    line(StartedEvent(backend="a1111", attempt=1))
    line(ProgressEvent(fraction=0.5))
    line.clear()
    text = out.getvalue()
    assert text.count("\r") == 4 and "a1111 · 50%" in text and text.endswith("\r")
    assert "\n" not in text  # one line, rewritten


async def test_events_prints_json_lines_then_the_result(slow_url: str, tmp_path: Path) -> None:
    run = await imagegate("generate", "a fox", "--width", "64", "--height", "64", "--steps", "40",
                          "--events", "--json", cwd=tmp_path, env={"A1111_URL": slow_url})
    assert run.code == 0, run.stderr
    *lines, result = [json.loads(line) for line in run.stdout.splitlines()]
    kinds = [e["type"] for e in lines]
    assert kinds[0] == "started" and kinds[-1] == "completed" and "progress" in kinds
    assert result["backend"] == "a1111" and result["images"]  # --json unchanged, last


async def test_on_a_terminal_one_live_line_shows_the_progress(slow_url: str, tmp_path: Path) -> None:
    main, child = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", "generate", "a fox", "--width", "64", "--height", "64",
        "--steps", "40", cwd=tmp_path, env={**environ, "A1111_URL": slow_url},
        stdout=asyncio.subprocess.PIPE, stderr=child,
    )
    os.close(child)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=45)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    assert "a1111 · " in text and "%" in text and "(step " in text
    assert "backend: a1111" in out.decode()  # the result itself is on stdout, as before
