"""``python -m imagegate.testing <kind> --port P [--tls]``: run one emulator until Ctrl-C
(SIGINT) or SIGTERM, which it handles itself: started in the background of a script (which
starts it with SIGINT ignored), it still stops on either.

The kinds are the provider registry's rows that name an emulator, plus ``hub`` (the Hub's
Space-runtime API, which Space backends check). An aiohttp emulator (``create_app``) is
served here; the Gradio stand-in (``hf_space``) runs its own ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagegate.backends.registry import REGISTRY
from imagegate.errors import ConfigError, port_number
from imagegate.testing.knobs import Knobs
from imagegate.testing.server import serve_app
from imagegate.testing.tls import LocalCA

__all__ = ["EMULATORS", "main"]

# kind -> emulator module
EMULATORS: dict[str, str] = {
    **{p.kind: p.emulator for p in REGISTRY if p.emulator},
    "hub": "imagegate.testing.hub",
}


def main(argv: Sequence[str] | None = None, *, kind: str | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = kind or (argv[0] if argv and argv[0] in EMULATORS else None)
    if chosen is not None:
        module = importlib.import_module(EMULATORS[chosen])
        if not hasattr(module, "create_app"):  # a stand-in with its own command line
            return int(module.main(argv[1:] if kind is None else argv))
    parser = argparse.ArgumentParser(prog="python -m imagegate.testing", description=__doc__)
    if kind is None:
        parser.add_argument("kind", choices=sorted(EMULATORS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=0, help="TCP port (0: any free one)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throwaway CA")
    parser.add_argument("--ca-out", type=Path, help="with --tls: write the CA certificate here")
    parser.add_argument("--api-key", help="the key clients must send (key-based emulators)")
    parser.add_argument("--username", help="a1111: require HTTP Basic auth")
    parser.add_argument("--password")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--render", action="store_true",
        help="draw every image anew instead of from a cache (as a real provider does)",
    )
    parser.add_argument("--official", action="store_true",
                        help="openai: behave as api.openai.com (OpenAI's models, no extension fields)")
    parser.add_argument("--step-s", type=float, dest="step_s",
                        help="a1111, comfyui: seconds per sampling step (progress and previews over time)")
    parser.add_argument("--flavor", choices=("a1111", "forge", "reforge", "sdnext"),
                        help="a1111: behave as this fork of the webui (its errors, samplers, routes)")
    args = parser.parse_args(argv)
    args.kind = kind or args.kind
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # the port cannot be listened on: one line, exit 2
        print(f"python -m imagegate.testing {args.kind}: {exc}", file=sys.stderr)
        return 2
    return 0



async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the "listening" line a caller waits for
        loop.add_signal_handler(sig, stop.set)
    module = importlib.import_module(EMULATORS[args.kind])
    accepted = inspect.signature(module.create_app).parameters
    options: dict[str, Any] = {"knobs": Knobs(latency_s=args.latency)}
    for name in ("api_key", "username", "password", "step_s", "flavor"):
        if name in accepted and getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.render:
        if "render" not in accepted:
            raise SystemExit(f"python -m imagegate.testing {args.kind}: --render is not supported")
        options["render"] = True
    if args.official and "official" in accepted:
        options["official"] = True
    app = module.create_app(**options)
    ca = LocalCA() if args.tls else None
    async with serve_app(app, tls=ca, host=args.host, port=args.port) as url:
        print(f"{args.kind} emulator listening on {url}", flush=True)
        if ca is not None:
            target = args.ca_out or ca.ca_file
            if args.ca_out:
                args.ca_out.write_bytes(ca.ca_file.read_bytes())
            print(f"CA certificate: {target} (use as ca_bundle or SSL_CERT_FILE)", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
