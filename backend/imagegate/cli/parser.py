"""The ``imagegate`` command's arguments: every option says what it does and its default."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from imagegate.errors import port_number
from imagegate.version import __version__

__all__ = ["build_parser"]

EPILOG = textwrap.fill(
    "With no --config and no IMAGEGATE_CONFIG, backends come from the environment (A1111_URL, "
    "NOVITA_API_KEY, STABILITY_API_KEY, HF_TOKEN, OPENAI_BASE_URL, HF_SPACES); with none of "
    "them, public Hugging Face Spaces. New here? Start with `imagegate demo`.",
    width=78,
)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: X)`` to an option's help when it has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or not (action.option_strings or action.nargs == "?")
        ):
            return text
        return f"{text} (default: %(default)s)"



def _sub(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="print every log event, debug included",
    )
    return parser


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, metavar="PATH",
        help="TOML config file (default: $IMAGEGATE_CONFIG, else the environment alone)",
    )


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate",
        description="One gateway to many image-generation providers, with failover.",
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    parser.add_argument(
        "--log-level", type=str.lower, choices=["debug", "info", "warning", "error"], metavar="LEVEL",
        help="what to log on stderr: debug, info, warning or error"
        " (default: warning; info for serve)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print every log event, debug included"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = _sub(sub, "generate", "generate image(s) from a prompt")
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument("--negative-prompt", metavar="TEXT", help="what not to draw (default: none)")
    # unset: 1024, which adaptation may fit to a backend without calling it the caller's ask
    gen.add_argument("--width", type=int, help="image width in pixels (default: 1024)")
    gen.add_argument("--height", type=int, help="image height in pixels (default: 1024)")
    gen.add_argument("--steps", type=int, help="sampling steps (default: the backend's)")
    gen.add_argument(
        "--guidance", type=float, dest="guidance_scale", metavar="SCALE",
        help="guidance (CFG) scale (default: the backend's)",
    )
    gen.add_argument("--seed", type=int, help="seed, for a repeatable image (default: random)")
    gen.add_argument("-n", type=int, default=1, dest="n", help="how many images")
    gen.add_argument("--sampler", help="sampler name (default: the backend's)")
    gen.add_argument("--model", help="model name (default: the backend's configured model)")
    gen.add_argument(
        "--format", dest="output_format", default="png", choices=["png", "jpeg", "webp"],
        help="image format",
    )
    gen.add_argument("--backend", metavar="NAME", help="use only this backend (default: any, in order)")
    gen.add_argument(
        "--deadline", type=float, metavar="S",
        help="overall deadline in seconds (default: [service] deadline_s)",
    )
    _config(gen)
    gen.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: [service] output_dir)"
    )
    _json(gen, "one object with the files and the attempt trail")
    gen.add_argument(
        "--events", action="store_true",
        help="print the request's events (queued, progress, failover, ...) as JSON lines on stdout",
    )

    bk = _sub(sub, "backends", "probe every configured backend once and print the table")
    _config(bk)
    _json(bk, "the table")

    diag = _sub(sub, "diagnose", "find out which backends answer, and why not")
    _config(diag)
    diag.add_argument(
        "--backend", action="append", dest="backends", metavar="NAME",
        help="check only this backend (repeatable; default: all)",
    )
    diag.add_argument("--generate", action="store_true", help="also run one small generation")
    _json(diag, "the report")
    diag.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per-step timeout in seconds")

    serve = _sub(sub, "serve", "run the OpenAI-compatible HTTP API")
    _config(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=port_number, default=8000, help="TCP port to listen on")

    demo = _sub(sub, "demo", "see failover work, with local stand-in providers")
    demo.add_argument(
        "prompt", nargs="?", default="a lighthouse at dusk, oil painting", help="what to draw"
    )
    demo.add_argument(
        "--scenario", choices=["failover", "hedge", "all-down", "kinds"], default="failover",
        help="what to show (kinds: one request through every kind of backend)",
    )
    demo.add_argument("--keep-running", action="store_true", help="keep the stand-ins up until Ctrl-C")
    demo.add_argument(
        "--config-out", type=Path, metavar="PATH",
        help="also write the stand-ins' config here (valid while they run)",
    )
    demo.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="output directory")
    _json(demo, "each request's trail (the narration stays on stderr)")
    return parser
