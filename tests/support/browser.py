"""Playwright driving Debian's chromium (/usr/bin/chromium, installed by `make system-deps`);
never a browser download."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import BrowserContext, Page, Response, async_playwright

from vaultsvc.storage.embedded import EmbeddedPostgres

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

CHROMIUM = Path(os.environ.get("VAULT_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOC_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def screenshot_dir() -> Path:
    """Where the browser tests write their screenshots: the committed docs/screenshots/ only
    when VAULT_UPDATE_SCREENSHOTS=1 (a plain test run leaves the tree clean), else
    VAULT_SCREENSHOT_DIR (a CI artifact directory) or a directory under the system temp."""
    if os.environ.get("VAULT_UPDATE_SCREENSHOTS") == "1":
        return DOC_SCREENSHOTS
    configured = os.environ.get("VAULT_SCREENSHOT_DIR")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"vaultsvc-screenshots-{os.getuid()}"


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[BrowserContext]:
    """A headless chromium with a fresh user-data-dir (``profile``)."""
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError(
            f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium"
        )
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            await context.close()


async def sign_in(page: Page, base_url: str, token: str) -> None:
    await page.goto(base_url + "login")
    await page.fill("#token", token)
    await page.click("#sign-in")
    await page.wait_for_url(base_url)
    await page.wait_for_selector("#stat-total:not(:text('\u2013'))")


async def shot(page: Page, name: str, *, full_page: bool = False) -> None:
    target = screenshot_dir()
    target.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(target / name), full_page=full_page)


class BodyRecorder:
    """Every HTTP response body the page receives."""

    def __init__(self, page: Page) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self._pending: list[asyncio.Task[None]] = []
        page.on("response", self._on_response)

    def _on_response(self, response: Response) -> None:
        self._pending.append(asyncio.ensure_future(self._read(response)))

    async def _read(self, response: Response) -> None:
        try:
            body = await response.body()
        except Exception:  # redirects and aborted requests have no body
            body = b""
        self.bodies.append((response.url, body))

    async def settled(self) -> list[tuple[str, bytes]]:
        await asyncio.gather(*self._pending)
        return self.bodies


async def pg_dump(pg: EmbeddedPostgres, url: str) -> bytes:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(pg.bin("pg_dump")), "--no-owner", "--dbname", url],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout
