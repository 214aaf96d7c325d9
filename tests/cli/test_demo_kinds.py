"""``imagegate demo --scenario kinds``: one real request through every kind's stand-in, as a
newcomer runs it (a subprocess, the clean environment of tests/isolated.py, and a private
network namespace with only loopback when ``unshare -n`` works)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from imagegate.cli.tour import tour_kinds
from PIL import Image

from tests.isolated import clean_env, isolation_prefix


def test_every_kind_with_a_stand_in_serves_one_image(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    command = [*(isolation_prefix() or []), sys.executable, "-m", "imagegate", "demo", "--scenario", "kinds",
               "--json", "--out", str(out)]
    proc = subprocess.run(command, check=False, cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    served = [doc["backend"] for doc in docs]
    kinds = [p.kind for p in tour_kinds()]
    assert served == kinds
    assert {"comfyui", "fal", "replicate", "together"} <= set(kinds) and "hf_space" not in kinds
    for doc in docs:
        (image,) = doc["images"]
        with Image.open(image["path"]) as img:
            assert img.size == (image["width"], image["height"])
    assert "every kind of backend" in proc.stderr and proc.stderr.count(" ok ") == len(kinds)
