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


# WCAG 2.1: relative luminance and contrast ratio (SC 1.4.3: 4.5:1, 3:1 for large text);
# every visible control named (a label, aria-label or its text), every image with alt text.
_A11Y = """() => {
  const problems = [];
  const parts = (c) => c.match(/[\\d.]+/g).map(Number);
  const channel = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = (c) => { const [r, g, b] = parts(c).map(channel); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const opaque = (c) => { const p = parts(c); return p.length < 4 || p[3] > 0; };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      if (opaque(c)) return c;
    }
    return 'rgb(255, 255, 255)';
  };
  for (const el of document.querySelectorAll('body *')) {
    if (!el.checkVisibility() || el.disabled) continue;
    if (![...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
    const s = getComputedStyle(el);
    const [a, b] = [lum(s.color), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(s.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)} of ${el.tagName}.${el.className}: ${el.textContent.trim().slice(0, 40)}`);
    }
  }
  for (const el of document.querySelectorAll('input, select, textarea, button, progress')) {
    if (!el.checkVisibility()) continue;
    if (!(el.labels?.length || el.getAttribute('aria-label') || el.textContent.trim())) {
      problems.push(`no accessible name: ${el.tagName}#${el.id}.${el.className}`);
    }
  }
  for (const img of document.querySelectorAll('img')) {
    if (img.checkVisibility() && !img.alt) problems.push(`no alt text: ${img.className}`);
  }
  return problems;
}"""


async def accessibility_problems(page: Page) -> list[str]:
    """Text below WCAG AA contrast, controls without a name, images without alt text."""
    problems: list[str] = await page.evaluate(_A11Y)
    return problems
