"""``python -m imagegate.testing.hf_inference --port 8080``: the router stand-in."""

from imagegate.testing.cli import main

raise SystemExit(main(kind="hf_inference"))
