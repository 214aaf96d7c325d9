"""What the CLI prints and the exit codes it ends with.

Exit codes: 0 success; 1 diagnose found no usable backend; 2 invalid request or config
(the message names the field and the allowed range); 3 no backend produced an image
(the attempt trail is printed); 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagegate.errors import AllBackendsFailed
from imagegate.models import Attempt, ImageResult

__all__ = [
    "DIAGNOSE_HINT",
    "EXIT_DOWN",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_INVALID",
    "EXIT_OK",
    "failure_json",
    "print_failure",
    "print_result",
    "result_json",
]

EXIT_OK = 0
EXIT_DOWN = 1
EXIT_INVALID = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
DIAGNOSE_HINT = "run `imagegate diagnose` to see why"


def result_json(result: ImageResult, paths: Sequence[Path]) -> dict[str, Any]:
    return {
        "backend": result.backend,
        "elapsed_s": round(result.elapsed_s, 4),
        "images": [
            {"path": str(p), "width": i.width, "height": i.height, "format": i.format.value, "seed": i.seed}
            for p, i in zip(paths, result.images, strict=True)
        ],
        "attempts": [_attempt_json(a) for a in result.attempts],
        "adjustments": [a.model_dump(mode="json") for a in result.adjustments],
    }


def _attempt_json(a: Attempt) -> dict[str, Any]:
    return {"backend": a.backend, "outcome": a.outcome, "elapsed_s": round(a.elapsed_s, 4), "error": a.error}


def print_result(result: ImageResult, paths: Sequence[Path], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result_json(result, paths)))
        return
    for path, img in zip(paths, result.images, strict=True):
        seed = "" if img.seed is None else f", seed {img.seed}"  # some Spaces report none
        print(f"{path}  ({img.width}x{img.height} {img.format.value}{seed})")
    tried = f", after {len(result.attempts)} attempts" if len(result.attempts) > 1 else ""
    print(f"backend: {result.backend}  time: {result.elapsed_s:.2f} s{tried}")
    for a in result.adjustments:
        print(f"adjusted: {a.short()} ({a.why})")


def failure_json(exc: AllBackendsFailed) -> dict[str, Any]:
    """What ``--json`` prints when no backend produced an image."""
    return {
        "error": {"kind": exc.kind, "message": exc.message, "deadline_exceeded": exc.deadline_exceeded},
        "attempts": [_attempt_json(a) for a in exc.attempts],
    }


def print_failure(exc: AllBackendsFailed, *, as_json: bool) -> None:
    """The trail (JSON on stdout, or lines on stderr), then the hint, on stderr either way."""
    if as_json:
        print(json.dumps(failure_json(exc)))
    else:
        print(f"imagegate: {exc.message}", file=sys.stderr)
        for a in exc.attempts:
            print(f"  {a.backend}: {a.outcome} after {a.elapsed_s:.2f} s: {a.error or ''}", file=sys.stderr)
    print(DIAGNOSE_HINT, file=sys.stderr)
