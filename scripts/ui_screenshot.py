"""Take README's screenshot of the operator page (docs/ui.png), all on 127.0.0.1.

    python3 scripts/ui_screenshot.py [docs/ui.png]

Four A1111 emulators stand for four backends: one fine and slow (it runs a job, with
progress and previews), one black-holed in the TLS handshake (its breaker open, counting
down), one whose password is refused (disabled), one spare. A job fails over from the dead
one to the slow one and is caught mid-way; the gallery holds a few images made before.
Needs Playwright and the system Chromium (as the page's tests do).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

import aiohttp
from imagegate.backends.registry import load_settings
from imagegate.server import ServerOptions, create_app, running
from imagegate.server.state import SERVICE
from imagegate.testing import FaultProxy, LocalCA, serve_app
from imagegate.testing import a1111 as emulator
from imagegate.testing.a1111_webui import Webui

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PROMPTS = ["a lighthouse at dusk, oil painting", "a red fox in the snow", "a paper boat on a pond"]


def config(work: Path, slow: str, holed: str, locked: str, spare: str, ca: Path) -> Path:
    text = f"""
[service]
output_dir = "{work / 'out'}"
probe_interval_s = 60
breaker_cooldown_s = 60

[[backend]]
name = "cloud-sd"
kind = "a1111"
base_url = "{holed}"
ca_bundle = "{ca}"
connect_timeout_s = 0.3

[[backend]]
name = "studio-gpu"
kind = "a1111"
base_url = "{slow}"
priority = 1
max_concurrency = 2
progress_interval_s = 0.1

[[backend]]
name = "shared-sd"
kind = "a1111"
base_url = "{locked}"
priority = 2
username_env = "SHARED_USER"
password_env = "SHARED_PASSWORD"

[[backend]]
name = "spare-sd"
kind = "a1111"
base_url = "{spare}"
priority = 3
"""
    path = work / "imagegate.toml"
    path.write_text(text)
    return path


async def main(target: Path) -> None:
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="imagegate-shot-"))
    (work / "ca").mkdir()
    ca = LocalCA(work / "ca")
    webui = Webui(step_s=0.08)
    try:
        async with serve_app(emulator.create_app(webui=webui)) as slow, \
                serve_app(emulator.create_app(), tls=ca) as tls, FaultProxy(tls) as proxy, \
                serve_app(emulator.create_app(username="u", password="right")) as locked, \
                serve_app(emulator.create_app()) as spare:
            path = config(work, slow, proxy.url, locked, spare, ca.ca_file)
            settings = load_settings(path, environ={"SHARED_USER": "u", "SHARED_PASSWORD": "wrong"},
                                     dotenv=False)
            app = create_app(settings, ServerOptions(state_dir=work / "state"))
            async with running(app) as url, aiohttp.ClientSession() as http:
                for i, prompt in enumerate(PROMPTS):
                    body = {"prompt": prompt, "size": "512x512", "steps": 4, "seed": 100 + i,
                            "model": "spare-sd" if i else "studio-gpu", "response_format": "url"}
                    async with http.post(url + "/v1/images/generations", json=body) as resp:
                        assert resp.status == 200, await resp.text()
                await app[SERVICE].probe_all()
                proxy.mode = "tls_blackhole"
                async with async_playwright() as pw:
                    browser = await pw.chromium.launch(
                        executable_path=shutil.which("chromium"), args=FLAGS)
                    page = await browser.new_page(viewport={"width": 1280, "height": 1000})
                    await page.goto(url + "/ui")
                    await page.locator("#conn.live").wait_for()
                    job = {"prompt": "a castle in the clouds, golden hour", "size": "512x512",
                           "steps": 80, "partial_images": 1}
                    async with http.post(url + "/v1/images/generations", json=job,
                                         headers={"Prefer": "respond-async"}) as resp:
                        assert resp.status == 202, await resp.text()
                    await page.wait_for_function(
                        "() => [...document.querySelectorAll('#live-list progress')]"
                        ".some(p => p.hasAttribute('value') && p.value > 0.3)", timeout=20_000)
                    await page.locator("#gallery-list .shot details").first.evaluate("d => d.open = true")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(target), full_page=True)
                    await browser.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {target}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "ui.png"))
