"""Run a command the way a newcomer's shell would: a clean environment, and no network.

``clean_env()`` keeps PATH (the test interpreter's bin directory first), LANG, HOME, TMPDIR,
PYTHONPATH and VIRTUAL_ENV, and sets ``HF_HUB_OFFLINE=1``, ``HF_HUB_DISABLE_TELEMETRY=1`` and
``GRADIO_ANALYTICS_ENABLED=False``: no provider key and no ``IMAGEGATE_CONFIG`` of the
developer's gets through. ``isolation_prefix()`` is the command prefix that runs a command in
a fresh network namespace with only loopback (``unshare -n``, as root or with user
namespaces), or None where that is not allowed.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["clean_env", "isolation_prefix"]

_PREFIX = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def clean_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    for name in ("HOME", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV"):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra)
    return env


@functools.cache
def isolation_prefix() -> tuple[str, ...] | None:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return None
    try:
        probe = subprocess.run([*_PREFIX, "true"], check=False, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return tuple(_PREFIX) if probe.returncode == 0 else None
