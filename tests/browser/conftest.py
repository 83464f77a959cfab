"""A real headless chromium (Debian's, never a downloaded browser) driven by Playwright, and screenshots."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import ROOT

CHROMIUM = Path(os.environ.get("ATTUNE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
# expect() keeps Playwright's own 5 s unless told: chromium and the API share two loaded cores in CI.
expect.set_options(timeout=30_000)
# Harmless noise of a headless chromium in a container.
IGNORED = ("dbus", "favicon", "Failed to connect to the bus")


def _wait_for_chromium(timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout  # `make test-deps` may still be installing it
    while not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        if time.monotonic() > deadline:
            pytest.fail(f"{CHROMIUM} not found: run `make test-deps` (apt-get install -y chromium) or set ATTUNE_CHROMIUM")
        time.sleep(1)


@pytest.fixture(scope="module")  # closed when the browser tests end, before other modules' event loops run
def browser() -> Iterator[Browser]:
    _wait_for_chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


class ConsoleErrors(list[str]):
    def record(self, msg: ConsoleMessage) -> None:
        where = (msg.location or {}).get("url", "")
        if msg.type == "error" and not any(x in msg.text or x in where for x in IGNORED):
            self.append(f"console: {msg.text}")


@pytest.fixture
def console_errors() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture
def page(browser: Browser, console_errors: ConsoleErrors) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.on("console", console_errors.record)
    pg.on("pageerror", lambda exc: console_errors.append(f"page error: {exc}"))
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
