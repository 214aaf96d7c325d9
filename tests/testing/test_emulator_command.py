"""``python -m imagegate.testing <kind>`` as a script starts it: in the background of a shell,
which starts background jobs with SIGINT ignored. It must still stop on Ctrl-C and on SIGTERM,
at once and cleanly (a README run once waited 15 s on it, then killed it)."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest


@pytest.mark.parametrize(("kind", "ready"), [
    ("a1111", b"a1111 emulator listening on http://127.0.0.1:"),
    ("hf_space", b"stand-in Space listening on http://127.0.0.1:"),  # the Gradio app, its own main
])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_emulator_stops_on_a_signal_even_when_started_with_sigint_ignored(
    sig: signal.Signals, kind: str, ready: bytes, unused_tcp_port: int
) -> None:
    proc = await asyncio.create_subprocess_exec(  # trap '' INT: what a shell's `&` does to a job
        "bash", "-c", f"trap '' INT; exec {sys.executable} -m imagegate.testing {kind} --port {unused_tcp_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert ready in line
    proc.send_signal(sig)
    try:
        code = await asyncio.wait_for(proc.wait(), timeout=15)  # generous: it takes 0.2-1 s
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"the emulator ignored {sig.name}")
    assert proc.stderr is not None
    assert code == 0, await proc.stderr.read()  # its own clean exit, not death by the signal
