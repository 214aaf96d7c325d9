"""README.md's runnable blocks: find them, and run them in order, the way a newcomer would.

The convention: an HTML comment ``<!-- runnable ATTRS -->`` on the line right before a fenced
block. A ``sh`` block runs with ``bash -e -o pipefail -c``; a ``python`` block needs
``save=NAME`` and is only written to NAME (a later ``sh`` block runs it). ATTRS are
shell-quoted words:

- ``background port=N`` / ``background file=PATH``: start it, go on once 127.0.0.1:N accepts
  (or PATH exists); it is stopped with SIGINT after the last block;
- ``exit=N``: the exit status expected (default 0);
- ``expect=REGEX``: stdout + stderr must match it (``re.S``);
- ``creates=GLOB``: a file matching GLOB (relative to the work directory) appears meanwhile.

Nothing in a command's text is replaced. Run as a script (``python readme_blocks.py SPEC
RESULT``) from inside the work directory, this module runs the blocks listed in SPEC (JSON)
and writes what happened to RESULT (JSON). It imports nothing but the standard library, so it
can run inside a fresh network namespace.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Block", "fenced_blocks", "run_blocks", "runnable_blocks"]

_MARKER = re.compile(r"^<!--\s*runnable\b(?P<attrs>.*?)-->\s*$")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
READY_TIMEOUT_S = 30.0
BLOCK_TIMEOUT_S = 60.0


@dataclass
class Block:
    """A fenced block of README.md; ``line`` is the 1-based line of its opening fence."""

    line: int
    lang: str
    code: str
    attrs: dict[str, str] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    runnable: bool = False


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block, with the ``runnable`` marker (if any) parsed."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        block = Block(i + 1, opening["lang"], "\n".join(lines[i + 1 : end]) + "\n")
        marker = _MARKER.match(lines[i - 1]) if i > 0 else None
        if marker:
            block.runnable = True
            for word in shlex.split(marker["attrs"]):
                key, sep, value = word.partition("=")
                if sep:
                    block.attrs[key] = value
                else:
                    block.flags.append(key)
        blocks.append(block)
        i = end + 1
    return blocks


def runnable_blocks(text: str) -> list[Block]:
    return [b for b in fenced_blocks(text) if b.runnable]


# -- running (inside the work directory) ----------------------------------------------------


def _files() -> set[str]:
    return {p.as_posix() for p in Path(".").rglob("*") if p.is_file() and not p.name.startswith(".block-")}


def _ready(block: Block, proc: subprocess.Popen[bytes]) -> str | None:
    """None once the background block is ready, else why not."""
    port, path = block.attrs.get("port"), block.attrs.get("file")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode} before it was ready"
        if path is not None and Path(path).exists():
            return None
        if port is not None:
            try:
                socket.create_connection(("127.0.0.1", int(port)), timeout=0.2).close()
                return None
            except OSError:
                pass
        time.sleep(0.05)
    return f"not ready after {READY_TIMEOUT_S:g} s (port={port}, file={path})"


def _run_one(block: Block, background: list[tuple[subprocess.Popen[bytes], Path, dict[str, Any]]]) -> dict[str, Any]:
    before, started = _files(), time.monotonic()
    result: dict[str, Any] = {"line": block.line, "rc": 0, "output": ""}
    if block.lang == "python":
        Path(block.attrs["save"]).write_text(block.code)
        compile(block.code, block.attrs["save"], "exec")
    elif "background" in block.flags:
        log = Path(f".block-{block.line}.log")
        with log.open("wb") as fh:
            proc = subprocess.Popen(  # faulthandler: a server that will not stop says where it is
                ["bash", "-c", block.code], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            )
        why = _ready(block, proc)
        if why is not None:
            result.update(rc=1, output=why)
        background.append((proc, log, result))
    else:
        try:
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block.code],
                check=False, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
            )
            result.update(rc=done.returncode, output=done.stdout + done.stderr)
        except subprocess.TimeoutExpired as exc:
            result.update(rc=-1, output=f"timed out after {exc.timeout:g} s")
    result["new_files"] = sorted(_files() - before)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result


def _stop(proc: subprocess.Popen[bytes], log: Path, result: dict[str, Any]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGABRT)  # faulthandler writes every thread's stack to the log
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            result["killed"] = True
    result["stopped_rc"] = proc.returncode
    result["output"] = (result["output"] + "\n" + log.read_text(errors="replace")).strip()


def run_blocks(blocks: list[Block]) -> list[dict[str, Any]]:
    """Run ``blocks`` in order in the current directory; stop the background ones at the end."""
    results: list[dict[str, Any]] = []
    background: list[tuple[subprocess.Popen[bytes], Path, dict[str, Any]]] = []
    try:
        for block in blocks:
            results.append(_run_one(block, background))
    finally:
        for proc, log, result in reversed(background):
            _stop(proc, log, result)
    return results


def main(argv: list[str]) -> int:
    # a shell starts background jobs with SIGINT ignored, and children inherit that: the
    # blocks get Ctrl-C's default, as in a terminal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec, out = Path(argv[0]), Path(argv[1])
    blocks = [Block(**raw) for raw in json.loads(spec.read_text())]
    out.write_text(json.dumps(run_blocks(blocks)))
    return 0


def to_json(blocks: list[Block]) -> str:
    return json.dumps([asdict(b) for b in blocks])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
