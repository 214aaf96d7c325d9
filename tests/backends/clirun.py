"""Run the real ``imagegate`` command in a subprocess, without blocking the test's event loop
(the emulator it talks to runs in that loop)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


async def run_imagegate(
    *args: str, config: Path, env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> CliResult:
    """``python -m imagegate ARGS`` with ``IMAGEGATE_CONFIG=config`` and ``env`` added."""
    full_env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_TOKEN"))}
    full_env.update(env)
    full_env["IMAGEGATE_CONFIG"] = str(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "imagegate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full_env, cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return CliResult(proc.returncode or 0, out.decode(), err.decode())
