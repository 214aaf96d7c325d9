"""The ``imagegate`` command line: generate, backends, diagnose, serve, demo.

The exit codes and what is printed are in ``output.py``; ``diagnose``, ``serve`` and
``demo`` are imported when chosen (each pulls in much that ``generate`` does not need).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

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
from imagegate.cli.parser import build_parser
from imagegate.errors import AllBackendsFailed, ConfigError, InvalidRequest
from imagegate.logging import configure_logging, event_of
from imagegate.models import ImageRequest
from imagegate.routing import ImageService
from imagegate.store import ImageStore

__all__ = ["build_parser", "main", "setup_logging"]

def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `imagegate`: the help, not an error
        parser.print_help()
        return EXIT_OK
    setup_logging(args)
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


# The router events the human output already tells (the status line, the trail at the end).
_TOLD_ELSEWHERE = frozenset({"backend_attempt", "all_backends_failed"})


def setup_logging(args: argparse.Namespace) -> None:
    """stderr only. ``serve``: info, console on a terminal, JSON lines otherwise. The other
    commands print warnings as one human line each (JSON lines with --json off a terminal);
    on a terminal the router's events also feed the status line. ``-v``: everything."""
    chosen = "debug" if args.verbose else args.log_level
    if args.command == "serve":
        configure_logging(level=chosen or "info", style="auto")
        return
    machine = getattr(args, "json", False) and not sys.stderr.isatty()
    lines = chosen or "warning"
    emitted = "debug" if sys.stderr.isatty() else lines  # the status line reads debug events
    handler = configure_logging(
        level=emitted if _rank(emitted) < _rank(lines) else lines,
        style="json" if machine else "human",
        line_level=lines,
    )
    if not machine and not args.verbose:
        handler.addFilter(lambda record: event_of(record)[0] not in _TOLD_ELSEWHERE)


def _rank(level: str) -> int:
    return int(logging.getLevelName(level.upper()))


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
