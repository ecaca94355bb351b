"""The dashboard in headless Chromium (Debian's package, driven by Playwright): live tables and a job page."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.conftest import ARTIFACTS, Stack, wait_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


async def test_dashboard_shows_jobs_live_and_a_job_page(stack: Stack, alice: httpx.AsyncClient) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed: `python -m infra install` installs it")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            await page.goto(f"{stack.url}/?token={stack.tokens['alice']}")
            await page.wait_for_selector("#status:has-text('live')", timeout=30_000)
            job_id = (await alice.post("/api/job/run", json={"command": "echo from the dashboard"})).json()["job_id"]
            await wait_state(alice, job_id, "succeeded")
            row = page.locator(f"#jobs tr[data-id='{job_id}']")
            await row.locator(".state.succeeded").wait_for(timeout=90_000)  # arrived live over SSE
            await row.locator("a").click()
            await page.locator("#job-output").get_by_text("from the dashboard").wait_for(timeout=30_000)
            await page.wait_for_function("document.querySelector('#latency-text').textContent.includes('p50')",
                                         timeout=30_000)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard-last.png"), full_page=True)
            await browser.close()
