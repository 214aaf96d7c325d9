"""A real browser for the operator page's tests: Playwright for Python driving the system's
Chromium (``/usr/bin/chromium``, Debian's package) through ``executable_path``, so nothing is
downloaded at test time. Each browser gets a fresh profile and the flags that keep a headless
Chromium from talking to anything but the page (no sync, component updates or background
networking).

Where Chromium or Playwright is missing the tests skip with the reason, and FAIL instead under
``IMAGEGATE_TEST_REQUIRE_SERVICES=1`` (``.ci/run``, which installs both), like ``need_redis()``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "outputs" / "ui"  # screenshots a person can look at after a run
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
WAIT_MS = 5000  # the bound of every wait for a DOM state (generous: no timing flake)


def chromium_path() -> str | None:
    """The system Chromium: $IMAGEGATE_CHROMIUM, else ``chromium`` on PATH (Debian's)."""
    given = os.environ.get("IMAGEGATE_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def need_browser() -> str:
    """The Chromium to drive; skip (or fail under .ci/run) when it or Playwright is missing."""
    missing = []
    path = chromium_path()
    if path is None:
        missing.append("chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("playwright is not installed (pip install -e '.[test]')")
    if missing:
        message = "; ".join(missing)
        if os.environ.get("IMAGEGATE_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    assert path is not None
    return path


@contextlib.asynccontextmanager
async def browser_context(
    viewport: dict[str, int] | None = None, **options: Any
) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile (deleted after), one context."""
    path = need_browser()
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="imagegate-chromium-")
    try:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=path, headless=True, args=CHROMIUM_FLAGS,
                viewport=viewport or DESKTOP,
                service_workers="block", **options,
            )
            context.set_default_timeout(WAIT_MS)
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def new_page(context: BrowserContext) -> Page:
    """A page that fails the test on any script error or CSP violation it logs."""
    page = context.pages[0] if context.pages else await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    return page


def page_errors(page: Page) -> list[str]:
    """Script errors and console errors, but not failed loads the test caused on purpose
    (a 401 while no key is given is the point of that test)."""
    errors: list[str] = page.errors  # type: ignore[attr-defined]
    return [e for e in errors if "status of 401" not in e]


async def screenshot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
