#!/usr/bin/env python3
"""Diagnose Hugging Face Spaces: the ones configured, or the ones named on the command line.

    python scripts/diagnose_spaces.py                                  # configured Spaces
    python scripts/diagnose_spaces.py owner/space-a owner/space-b      # these Spaces
    python scripts/diagnose_spaces.py --json --timeout 5 owner/space-a
    IMAGEGATE_HUB_URL=http://127.0.0.1:8900 python scripts/diagnose_spaces.py owner/x

For each Space: DNS, TCP and TLS to the Hub, the Hub's runtime record (stage, hardware), the
Gradio app's endpoints and whether ``api_name``/``inputs`` match them; ``--generate`` adds one
small real generation. A Space named here uses the mapping of a well-known Space
(imagegate.backends.hf_space.spaces.KNOWN_SPACES) or else ``inputs = {prompt = "prompt"}``. ``HF_TOKEN`` is used
when set (shown as present/absent only). Exit 0 when at least one Space is ok, 1 when none,
2 for a bad argument or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    import imagegate  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "backend"))

from imagegate.backends.hf_space import HFSpaceSettings
from imagegate.backends.hf_space.spaces import space_backend_tables
from imagegate.backends.registry import load_settings
from imagegate.config import Settings
from imagegate.diagnose.run import config_error, run
from imagegate.errors import ConfigError
from pydantic import ValidationError

HUB_ENV = "IMAGEGATE_HUB_URL"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diagnose_spaces.py", description=__doc__.split("\n\n")[0])
    p.add_argument("spaces", nargs="*", metavar="OWNER/NAME", help="Spaces to diagnose (default: configured)")
    p.add_argument("--config", type=Path, help="TOML config file (default: $IMAGEGATE_CONFIG)")
    p.add_argument("--hub-url", default=os.environ.get(HUB_ENV), help=f"the Hub's URL (default: ${HUB_ENV} or huggingface.co)")
    p.add_argument("--generate", action="store_true", help="also run one small generation per Space")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--timeout", type=float, default=10.0, help="per-step timeout in seconds")
    return p


def named_spaces(ids: Sequence[str], hub_url: str | None, environ: dict[str, str]) -> Settings:
    """Settings with one hf_space backend per Space id."""
    backends, secrets = [], {}
    tables = space_backend_tables(",".join(ids), have_others=True)
    names = [t["name"] for t in tables]
    for table in tables:
        if names.count(table["name"]) > 1:  # owner-a/flux and owner-b/flux
            table["name"] = table["space"].replace("/", "-").lower()
        if hub_url:
            table["hub_url"] = hub_url
        try:
            cfg = HFSpaceSettings.model_validate(table)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"]) or "space"
            raise ConfigError(f"{table['space']!r}: {field}: {err['msg']} (expected owner/name)") from None
        backends.append(cfg)
        token = environ.get(cfg.token_env, "").strip()
        secrets[cfg.name] = {"token": token} if token else {}
    return Settings(backends=tuple(backends), secrets=secrets, source="command line")


def configured_spaces(path: Path | None, hub_url: str | None) -> Settings:
    """The hf_space backends of the configuration, optionally pointed at another Hub."""
    settings = load_settings(path, require_secrets=False)
    spaces = [b for b in settings.backends if b.kind == "hf_space"]
    if not spaces:
        raise ConfigError(f"{settings.source}: no hf_space backend is configured; name Spaces as arguments")
    if hub_url:
        hub = HFSpaceSettings.model_validate({"name": "x", "space": "x/x", "hub_url": hub_url}).hub_url
        spaces = [b.model_copy(update={"hub_url": hub}) for b in spaces]
    return settings.model_copy(update={"backends": tuple(spaces)})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.spaces:
            settings = named_spaces(args.spaces, args.hub_url, dict(os.environ))
        else:
            settings = configured_spaces(args.config, args.hub_url)
        return run(settings, generate=args.generate, timeout=args.timeout, as_json=args.json)
    except ConfigError as exc:
        return config_error(exc, as_json=args.json, prog="diagnose_spaces.py")
    except ValidationError as exc:  # a bad --hub-url
        return config_error(ConfigError(f"--hub-url: {exc.errors(include_url=False)[0]['msg']}"),
                            as_json=args.json, prog="diagnose_spaces.py")


if __name__ == "__main__":
    from imagegate.logging import configure_logging

    configure_logging(level="warning")
    sys.exit(main())
