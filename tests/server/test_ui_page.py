"""The operator page in a real browser (headless Chromium driven by Playwright, ``browser.py``),
against the real server and real emulators on loopback: the board, a breaker opening live,
the playground, the gallery, the live list with failover and cancel, the API key gate, the
layout at 1280 px and on a phone. Every test saves a screenshot under ``outputs/ui/``.

Waits are for DOM states (Playwright's auto-waiting), each bounded by ``WAIT_MS`` (5 s):
generous bounds, never a timed assertion."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from imagegate.server import ServerOptions
from imagegate.server.state import SERVICE
from imagegate.testing import FaultProxy, LocalCA, black_hole, serve_app
from imagegate.testing import a1111 as a1111_emulator
from imagegate.testing.a1111_webui import Webui

from tests.conftest import make_settings
from tests.routing.support import eventually
from tests.server.browser import (
    CHROMIUM_FLAGS,
    PHONE,
    SHOTS,
    accessibility_problems,
    browser_context,
    need_browser,
    new_page,
    page_errors,
    screenshot,
)
from tests.server.kit import gateway

KEY = "sk-ui-test-0123456789"
ASYNC = {"Prefer": "respond-async"}


def backend(name: str, url: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "kind": "a1111", "base_url": url, "max_concurrency": 4, **keys}


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, backends: list[dict[str, Any]], options: ServerOptions | None = None,
    **service: Any,
) -> AsyncIterator[tuple[str, web.Application]]:
    need_browser()  # before any server starts: skip (or fail) at once
    settings = make_settings(backends, service={
        "output_dir": tmp_path / "out", "probe_interval_s": 60.0, "breaker_cooldown_s": 30.0,
        **service}, tmp_path=tmp_path)
    async with gateway(settings, options) as running:
        yield running


async def generate(url: str, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    payload = {"prompt": "a lighthouse at dusk", "size": "128x128", "steps": 20, **body}
    async with aiohttp.ClientSession() as http, http.post(
        url + "/v1/images/generations", json=payload, headers=headers or {}
    ) as resp:
        answer = await resp.json()
        assert resp.status in (200, 202), answer
        return dict(answer)


def card(name: str) -> str:
    return f'#board [data-backend="{name}"]'


async def test_the_board_shows_every_configured_backend(tmp_path: Path, a1111_url: str) -> None:
    backends = [backend("local-sd", a1111_url), backend("spare-sd", a1111_url, priority=1),
                backend("night-shift", a1111_url, priority=2)]
    async with served(tmp_path, backends) as (url, app), browser_context() as ctx:
        await app[SERVICE].probe_all()
        page = await new_page(ctx)
        await page.goto(url + "/ui")
        for b in backends:
            item = page.locator(card(b["name"]))
            await item.wait_for()
            assert await item.get_attribute("data-state") == "closed"
            text = await item.inner_text()
            assert "CLOSED" in text and "a1111" in text and "0 / 4" in text
            assert re.search(r"Last probe\s+ok, \d+ s ago", text), text
        assert await page.locator("#board > li").count() == 3
        await page.locator(f'{card("local-sd")} details summary').click()
        assert "sizes:" in await page.locator(f'{card("local-sd")} details').inner_text()
        await expect_live(page)
        await screenshot(page, "board")
        assert await accessibility_problems(page) == []
        assert page_errors(page) == []


async def expect_live(page: Any) -> None:
    """The page holds its live stream (the header says so once the first frame arrived)."""
    await page.locator("#conn.live").wait_for()


async def test_a_black_holed_backend_turns_open_with_a_countdown_at_once(
    tmp_path: Path, local_ca: LocalCA, a1111_url: str
) -> None:
    async with serve_app(a1111_emulator.create_app(), tls=local_ca) as tls_url, \
            FaultProxy(tls_url) as proxy:
        backends = [backend("local-sd", a1111_url),
                    backend("cloud-sd", proxy.url, ca_bundle=local_ca.ca_file, connect_timeout_s=0.3)]
        async with served(tmp_path, backends) as (url, _), browser_context() as ctx:
            page = await new_page(ctx)
            await page.goto(url + "/ui")
            await expect_live(page)
            holed = page.locator(card("cloud-sd"))
            assert await holed.get_attribute("data-state") == "closed"
            proxy.mode = "tls_blackhole"
            async with aiohttp.ClientSession() as http, http.post(
                url + "/v1/images/generations", json={"prompt": "x", "size": "64x64", "model": "cloud-sd"}
            ) as resp:
                assert resp.status == 502  # the handshake timed out: the breaker trips
            failed_at = time.monotonic()
            await page.locator(f'{card("cloud-sd")}[data-state="open"]').wait_for()
            seen_after = time.monotonic() - failed_at
            countdown = holed.locator(".countdown")
            first = await countdown.inner_text()
            assert re.fullmatch(r"next trial in (29|30) s", first), first
            text = await holed.inner_text()
            assert "OPEN" in text and "handshake_timeout" in text
            await page.wait_for_function(  # it counts down on the page, against the server clock
                "el => /next trial in 2[0-8] s/.test(el.textContent)",
                arg=await countdown.element_handle(), timeout=5000,
            )
            assert await page.locator(card("local-sd")).get_attribute("data-state") == "closed"
            await screenshot(page, "breaker-open")
            assert await accessibility_problems(page) == []  # the open card's colours too
            print(f"card open {seen_after:.3f} s after the failed request returned")
            assert page_errors(page) == []


async def test_a_playground_generation_shows_progress_then_the_image(
    tmp_path: Path, knobs: Any
) -> None:
    webui = Webui(step_s=0.05)
    async with serve_app(a1111_emulator.create_app(knobs=knobs, webui=webui)) as slow:
        backends = [backend("local-sd", slow, progress_interval_s=0.05)]
        async with served(tmp_path, backends) as (url, _), browser_context() as ctx:
            page = await new_page(ctx)
            await page.goto(url + "/ui")
            await expect_live(page)
            await page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
            await page.get_by_label("Negative prompt").fill("blurry")
            await page.get_by_label("Size").fill("256x256")
            await page.get_by_label("Steps").fill("60")
            await page.get_by_label("Seed").fill("42")
            await page.get_by_label("Backend", exact=True).select_option("local-sd")
            await page.get_by_role("button", name="Generate").focus()
            await page.keyboard.press("Enter")  # the form works from the keyboard
            job = page.locator("#play-job")
            await page.wait_for_function(
                "() => { const p = document.querySelector('#play-job progress');"
                " return p && p.hasAttribute('value') && p.value > 0 && p.value < 1; }"
            )
            assert re.search(r"step \d+/60", await job.locator(".eta").inner_text())
            await job.locator("img.preview:not([hidden])").wait_for()
            await screenshot(page, "playground-progress")
            result = job.locator("img.result")
            await result.wait_for(timeout=10_000)  # 60 steps of 50 ms, then the answer
            await page.wait_for_function("img => img.complete && img.naturalWidth === 256",
                                         arg=await result.element_handle())
            assert "DONE" in await job.inner_text() and "Made by local-sd" in await job.inner_text()
            assert await job.locator("progress").get_attribute("value") == "1"
            await page.locator('#gallery-list [data-key] .prompt', has_text="a red fox").wait_for()
            await screenshot(page, "playground-done")
            assert page_errors(page) == []


async def test_the_gallery_lists_an_image_with_its_parameters_and_adjustments(
    tmp_path: Path, a1111_url: str
) -> None:
    async with served(tmp_path, [backend("local-sd", a1111_url)]) as (url, _):
        await generate(url, prompt="a lighthouse at dusk", negative_prompt="fog",
                       response_format="url", output_format="webp", seed=7, steps=12)
        async with browser_context(permissions=["clipboard-read", "clipboard-write"]) as ctx:
            page = await new_page(ctx)
            await page.goto(url + "/ui")
            shot = page.locator("#gallery-list .shot").first
            await shot.wait_for()
            text = await shot.inner_text()
            assert "a lighthouse at dusk" in text and "on local-sd" in text
            assert "12 steps" in text and "seed 7" in text
            assert "Adjusted: output_format webp->webp (converted with Pillow" in text
            await shot.locator("summary", has_text="Parameters").click()
            params = await shot.locator("pre.parameters").inner_text()
            assert params.startswith("a lighthouse at dusk\nNegative prompt: fog\nSteps: 12")
            assert "Backend: local-sd" in params
            await page.wait_for_function("img => img.complete && img.naturalWidth === 128",
                                         arg=await shot.locator("img").element_handle())
            await shot.get_by_role("button", name=re.compile("Copy the parameters")).click()
            await shot.get_by_text("Copied.").wait_for()
            assert await page.evaluate("navigator.clipboard.readText()") == params
            await screenshot(page, "gallery")
            assert page_errors(page) == []


async def test_live_list_shows_a_jobs_failover_and_progress_and_cancels_it(
    tmp_path: Path, knobs: Any
) -> None:
    webui = Webui(step_s=0.05)
    async with black_hole() as (host, port), \
            serve_app(a1111_emulator.create_app(knobs=knobs, webui=webui)) as slow:
        backends = [
            backend("cloud-sd", f"https://{host}:{port}", connect_timeout_s=0.3),
            backend("local-sd", slow, priority=1, progress_interval_s=0.05),
        ]
        async with served(tmp_path, backends) as (url, _), browser_context() as ctx:
            page = await new_page(ctx)
            await page.goto(url + "/ui")
            await expect_live(page)
            job = await generate(url, ASYNC, prompt="a slow painting", steps=150)
            item = page.locator(f'#live-list [data-key="{job["id"]}"]')
            await item.wait_for()
            await item.locator(".failovers li", has_text="cloud-sd → local-sd: handshake_timeout").wait_for()
            await item.locator('[data-status="running"] .where', has_text="on local-sd").wait_for()
            await page.wait_for_function(
                "el => { const p = el.querySelector('progress'); return p.hasAttribute('value') && p.value > 0; }",
                arg=await item.element_handle(),
            )
            assert "a slow painting" in await item.inner_text()
            await screenshot(page, "live-failover")
            assert await accessibility_problems(page) == []
            await item.get_by_role("button", name=f"Cancel job {job['id']}").click()
            await item.locator('.progress-view[data-status="cancelled"]').wait_for()
            assert await item.get_by_role("button", name=re.compile("Cancel job")).is_hidden()
            assert webui.interrupts, "the emulator was told to stop the job"
            await screenshot(page, "live-cancelled")
            assert page_errors(page) == []


async def test_with_an_api_key_the_page_shows_nothing_until_the_key_is_given(
    tmp_path: Path, a1111_url: str
) -> None:
    options = ServerOptions(api_keys=(KEY,))
    async with served(tmp_path, [backend("secret-sd", a1111_url)], options) as (url, _), \
            browser_context() as ctx:
        page = await new_page(ctx)
        requests: list[Any] = []
        page.on("request", lambda r: requests.append(r))
        await page.goto(url + "/ui")
        gate = page.locator("#key-gate")
        await gate.wait_for()
        assert await page.locator("#app").is_hidden()
        assert "secret-sd" not in await page.content()
        await screenshot(page, "key-gate")
        assert await accessibility_problems(page) == []

        await page.get_by_label("API key", exact=True).fill("sk-wrong-key")
        await page.get_by_role("button", name="Unlock").click()
        await page.locator("#key-error", has_text="incorrect API key").wait_for()
        assert "secret-sd" not in await page.content()

        await page.get_by_label("API key", exact=True).fill(KEY)
        await page.get_by_label("API key", exact=True).press("Enter")
        await page.locator(card("secret-sd")).wait_for()
        await expect_live(page)
        assert await gate.is_hidden()
        await page.reload()  # asked once: the tab keeps it
        await page.locator(card("secret-sd")).wait_for()
        assert await gate.is_hidden()
        await screenshot(page, "key-unlocked")

        data = [r for r in requests if "/v1/" in r.url]
        assert data and all(KEY not in r.url for r in requests)
        sent = [await r.all_headers() for r in data]
        assert any(h.get("authorization") == f"Bearer {KEY}" for h in sent)
        await page.get_by_role("button", name="Forget key").click()
        await gate.wait_for()
        assert "secret-sd" not in await page.content()
        assert await page.evaluate("sessionStorage.length") == 0
        assert page_errors(page) == []


async def test_the_layout_fits_1280_px_and_a_phone_without_sideways_scrolling(
    tmp_path: Path, a1111_url: str
) -> None:
    long_name = "a-backend-with-a-rather-long-name-for-a-phone"
    async with served(tmp_path, [backend("local-sd", a1111_url), backend(long_name, a1111_url)]) as (url, _):
        await generate(url, prompt="a lighthouse " * 30, response_format="url")
        for viewport, name in (({"width": 1280, "height": 900}, "layout-1280"), (PHONE, "layout-phone")):
            async with browser_context(viewport=viewport) as ctx:
                page = await new_page(ctx)
                await page.goto(url + "/ui")
                await page.locator("#gallery-list .shot").first.wait_for()
                await expect_live(page)
                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], (name, width)
                await screenshot(page, name)
                assert await accessibility_problems(page) == []
                assert page_errors(page) == []


async def test_the_first_load_is_small(tmp_path: Path, a1111_url: str) -> None:
    """The page's weight: every byte of the first load (headers included, as the network
    carries them), the live stream left out (it never ends)."""
    async with served(tmp_path, [backend("local-sd", a1111_url)]) as (url, _), \
            browser_context() as ctx:
        page = await new_page(ctx)
        cdp = await ctx.new_cdp_session(page)
        await cdp.send("Network.enable")
        sizes: dict[str, float] = {}
        urls: dict[str, str] = {}
        cdp.on("Network.requestWillBeSent", lambda e: urls.__setitem__(e["requestId"], e["request"]["url"]))
        cdp.on("Network.loadingFinished",
               lambda e: sizes.__setitem__(e["requestId"], e["encodedDataLength"]))
        await page.goto(url + "/ui")
        await expect_live(page)
        await page.locator("#gallery-empty").wait_for()

        def loaded() -> dict[str, float]:
            return {urls[k].removeprefix(url): v for k, v in sizes.items() if k in urls}

        # CDP's last loadingFinished events may come a moment later
        await eventually(
            lambda: any(u.endswith("/ui/main.js") for u in loaded()) and "/v1/ui/board" in loaded()
        )
        await asyncio.sleep(0.2)  # and any straggler (it would only add to the total)
        loaded_now = loaded()
        total = sum(loaded_now.values())
        print(f"first load: {total:.0f} bytes in {len(loaded_now)} responses: {loaded_now}")
        assert total < 40_000, loaded_now


class _Cards(HTMLParser):
    """The board's cards in a dumped DOM: {backend: (state, text)}."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: dict[str, list[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        name = found.get("data-backend")
        if tag == "li" and name:
            self.cards[name] = [found.get("data-state") or "", ""]
            self._open.append(name)
        elif tag == "li":
            self._open.append(None)

    def handle_endtag(self, tag: str) -> None:
        if tag == "li" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in self._open:
            if name is not None:
                self.cards[name][1] += data


async def test_chromium_dump_dom_holds_every_backend_and_the_dead_ones_open_breaker(
    tmp_path: Path, a1111_url: str
) -> None:
    """The issue's "done when": ``chromium --headless --dump-dom`` of /ui, after the page's
    scripts ran (``--virtual-time-budget``), names every backend and shows the dead one open."""
    path = need_browser()
    async with black_hole() as (host, port):
        backends = [backend("local-sd", a1111_url), backend("spare-sd", a1111_url, priority=1),
                    backend("dead-cloud", f"https://{host}:{port}", connect_timeout_s=0.3)]
        async with served(tmp_path, backends, probe_timeout_s=0.5) as (url, app):
            health = {h.name: h.state for h in await app[SERVICE].probe_all()}
            assert health == {"local-sd": "closed", "spare-sd": "closed", "dead-cloud": "open"}
            profile = tmp_path / "profile"
            proc = await asyncio.create_subprocess_exec(
                path, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                "--virtual-time-budget=5000", url + "/ui",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    dom = out.decode()
    (SHOTS / "dump-dom.html").parent.mkdir(parents=True, exist_ok=True)
    (SHOTS / "dump-dom.html").write_text(dom)
    parser = _Cards()
    parser.feed(dom)
    assert set(parser.cards) == {"local-sd", "spare-sd", "dead-cloud"}, dom[-2000:]
    state, text = parser.cards["dead-cloud"]
    assert state == "open" and "open" in text and "handshake_timeout" in text
    assert re.search(r"next trial in \d+ s", text), text
    assert [parser.cards[n][0] for n in ("local-sd", "spare-sd")] == ["closed", "closed"]
