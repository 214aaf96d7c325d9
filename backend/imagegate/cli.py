"""The ``imagegate`` command line: generate, backends, diagnose, serve, demo.

Exit codes: 0 success; 1 diagnose found no usable backend; 2 invalid request or config
(the message names the field and the allowed range); 3 no backend produced an image
(the attempt trail is printed); 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from imagegate.errors import AllBackendsFailed, ConfigError, InvalidRequest
from imagegate.logging import configure_logging
from imagegate.models import ImageRequest, ImageResult

__all__ = ["main"]

EXIT_OK = 0
EXIT_DOWN = 1
EXIT_INVALID = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate", description="One gateway to many image-generation providers."
    )
    parser.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="generate image(s) from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--width", type=int, default=1024)
    gen.add_argument("--height", type=int, default=1024)
    gen.add_argument("--steps", type=int)
    gen.add_argument("--guidance", type=float, dest="guidance_scale")
    gen.add_argument("--seed", type=int)
    gen.add_argument("-n", type=int, default=1, dest="n")
    gen.add_argument("--sampler")
    gen.add_argument("--model")
    gen.add_argument("--format", dest="output_format", default="png", help="png, jpeg or webp")
    gen.add_argument("--backend", help="use only this backend (by name)")
    gen.add_argument("--deadline", type=float, help="overall deadline in seconds")
    _common(gen)
    gen.add_argument("--out", type=Path, help="output directory (default: [service] output_dir)")
    gen.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    bk = sub.add_parser("backends", help="probe every configured backend once and print the table")
    _common(bk)
    bk.add_argument("--json", action="store_true")

    diag = sub.add_parser("diagnose", help="find out which backends answer, and why not")
    _common(diag)
    diag.add_argument("--backend", action="append", dest="backends", metavar="NAME")
    diag.add_argument("--generate", action="store_true", help="also run one small generation")
    diag.add_argument("--json", action="store_true")
    diag.add_argument("--timeout", type=float, default=10.0, help="per-step timeout in seconds")

    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP API")
    _common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    demo = sub.add_parser("demo", help="see failover work, with local stand-in providers")
    demo.add_argument("prompt", nargs="?", default="a lighthouse at dusk, oil painting")
    demo.add_argument("--scenario", choices=["failover", "hedge", "all-down"], default="failover")
    demo.add_argument("--keep-running", action="store_true", help="keep the stand-ins up until Ctrl-C")
    demo.add_argument("--config-out", type=Path, metavar="PATH",
                      help="also write the stand-ins' config here (valid while they run)")
    demo.add_argument("--out", type=Path, default=Path("outputs"))
    demo.add_argument("--json", action="store_true")
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: $IMAGEGATE_CONFIG)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        print(f"imagegate: config error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except InvalidRequest as exc:
        print(f"imagegate: invalid request: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "generate":
        return asyncio.run(_generate(args))
    if args.command == "backends":
        return asyncio.run(_backends(args))
    if args.command == "diagnose":
        from imagegate.diagnose import run_cli as run_diagnose

        return run_diagnose(args)
    if args.command == "serve":
        from imagegate.server import run_cli as run_server

        return run_server(args)
    if args.command == "demo":
        from imagegate.demo import run_cli as run_demo

        return run_demo(args)
    raise AssertionError(args.command)


def request_from_args(args: argparse.Namespace) -> ImageRequest:
    fields = [
        "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale",
        "seed", "n", "sampler", "model", "output_format",
    ]
    data = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    return ImageRequest.parse(data)


async def _generate(args: argparse.Namespace) -> int:
    from imagegate.router import ImageService
    from imagegate.store import ImageStore

    request = request_from_args(args)  # before any config or network: bad input costs nothing
    service = ImageService.from_config(args.config)
    out_dir = args.out or service.settings.service.output_dir
    async with service, _progress(sys.stderr):
        try:
            result = await service.generate(request, backend=args.backend, deadline_s=args.deadline)
        except AllBackendsFailed as exc:
            _print_failure(exc, as_json=args.json)
            return EXIT_FAILED
    store = ImageStore(out_dir)
    paths = [store.save(img, request, backend=result.backend) for img in result.images]
    _print_result(result, paths, as_json=args.json)
    return EXIT_OK


def result_json(result: ImageResult, paths: Sequence[Path]) -> dict[str, Any]:
    return {
        "backend": result.backend,
        "elapsed_s": round(result.elapsed_s, 4),
        "images": [
            {"path": str(p), "width": i.width, "height": i.height, "format": i.format.value, "seed": i.seed}
            for p, i in zip(paths, result.images, strict=True)
        ],
        "attempts": [_attempt_json(a) for a in result.attempts],
    }


def _attempt_json(a: Any) -> dict[str, Any]:
    return {"backend": a.backend, "outcome": a.outcome, "elapsed_s": round(a.elapsed_s, 4), "error": a.error}


def _print_result(result: ImageResult, paths: Sequence[Path], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result_json(result, paths)))
        return
    for path, img in zip(paths, result.images, strict=True):
        print(f"{path}  ({img.width}x{img.height} {img.format.value}, seed {img.seed})")
    tried = f", after {len(result.attempts)} attempts" if len(result.attempts) > 1 else ""
    print(f"backend: {result.backend}  time: {result.elapsed_s:.2f} s{tried}")


def failure_json(exc: AllBackendsFailed) -> dict[str, Any]:
    """What ``--json`` prints when no backend produced an image."""
    return {
        "error": {"kind": exc.kind, "message": exc.message, "deadline_exceeded": exc.deadline_exceeded},
        "attempts": [_attempt_json(a) for a in exc.attempts],
    }


def _print_failure(exc: AllBackendsFailed, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(failure_json(exc)))
        return
    print(f"imagegate: {exc.message}", file=sys.stderr)
    for a in exc.attempts:
        print(f"  {a.backend}: {a.outcome} after {a.elapsed_s:.2f} s: {a.error or ''}", file=sys.stderr)


@contextlib.asynccontextmanager
async def _progress(stream: TextIO) -> AsyncIterator[None]:
    """An elapsed-time counter on ``stream`` while waiting, only when it is a terminal."""
    if not stream.isatty():
        yield
        return
    start = time.monotonic()

    async def tick() -> None:
        frames = "|/-\\"
        i = 0
        while True:
            stream.write(f"\r{frames[i % 4]} generating... {time.monotonic() - start:5.1f} s")
            stream.flush()
            i += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stream.write("\r" + " " * 40 + "\r")
        stream.flush()


async def _backends(args: argparse.Namespace) -> int:
    from imagegate.router import ImageService

    async with ImageService.from_config(args.config) as service:
        table = await service.probe_all()
    if args.json:
        print(json.dumps([h.model_dump(mode="json") for h in table]))
    else:
        print(f"{'backend':<24} {'kind':<13} {'state':<10} {'ok':<4} {'time':>8}  detail")
        for h in table:
            ok = "yes" if h.ok else "no"
            t = h.timings.get("total_s")
            detail = h.detail if h.ok else f"{h.last_error_kind}: {h.last_error}"
            print(f"{h.name:<24} {h.kind:<13} {h.state:<10} {ok:<4} {t or 0:>7.3f}s  {detail}")
    return EXIT_OK if any(h.ok for h in table) else EXIT_DOWN


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
