"""The ``imagegate`` command line: generate, backends, diagnose, serve, demo.

The exit codes and what is printed are in ``output.py``; ``diagnose``, ``serve`` and
``demo`` are imported when chosen (each pulls in much that ``generate`` does not need).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from imagegate.cli.live import listener
from imagegate.cli.output import (
    EXIT_DOWN,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OK,
    print_failure,
    print_result,
)
from imagegate.errors import AllBackendsFailed, ConfigError, InvalidRequest
from imagegate.logging import configure_logging
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.store import ImageStore

__all__ = ["main"]

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
    gen.add_argument("--events", action="store_true",
                     help="print the request's events (queued, progress, ...) as JSON lines on stdout")

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
        from imagegate.diagnose.run import run_cli as run_diagnose

        return run_diagnose(args)
    if args.command == "serve":
        from imagegate.server.run import run_cli as run_server

        return run_server(args)
    if args.command == "demo":
        from imagegate.cli.demo import run_cli as run_demo

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
    request = request_from_args(args)  # before any config or network: bad input costs nothing
    service = ImageService.from_config(args.config)
    out_dir = args.out or service.settings.service.output_dir
    async with service, listener(sys.stderr, events=args.events) as on_event:
        try:
            result = await service.generate(
                request, backend=args.backend, deadline_s=args.deadline, on_event=on_event
            )
        except AllBackendsFailed as exc:
            print_failure(exc, as_json=args.json)
            return EXIT_FAILED
    store = ImageStore(out_dir)
    paths = [store.save(img, request, backend=result.backend) for img in result.images]
    print_result(result, paths, as_json=args.json)
    return EXIT_OK


async def _backends(args: argparse.Namespace) -> int:
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
