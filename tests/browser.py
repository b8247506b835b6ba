"""Headless Chromium for tests that open a page: Debian's system `chromium`, driven by Playwright.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (or whichever
`chromium` is on PATH) through `executable_path`. Without Chromium or Playwright the tests skip,
unless the environment variable CI is set: then they fail, because CI must run them.

Use it from a test module:

    from browser import chromium, open_page  # noqa: F401  (chromium is a fixture)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_HINT = "apt-get install chromium (Debian's package) and pip install playwright==1.65.2"


def chromium_path() -> str | None:
    """The system Chromium's executable, or None."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _require(condition: bool, reason: str) -> None:
    """Skip when `condition` is false, but fail under CI, which must run the browser tests."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so this test must run ({INSTALL_HINT}).")
    pytest.skip(f"{reason}: {INSTALL_HINT}")


# Module scope, not session: Playwright's sync API runs an asyncio loop in this thread while the
# browser is open, and code under test elsewhere (the openai client) calls asyncio.run().
@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """A headless system Chromium (a Playwright `Browser`) shared by the session's tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "Playwright's Python package is not installed")
    executable = chromium_path()
    _require(executable is not None, "no system Chromium (/usr/bin/chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def open_page(
    browser,
    url: str,
    requests: list[str] | None = None,
    ready: bool = True,
    bypass_csp=False,
    complete: bool = True,
):
    """A new page (in its own context) at `url`; each request's URL is appended to `requests`.

    With `ready`, waits until the page says it has drawn its first rows (`data-ready` on <html>)
    and, with `complete` too, until all its data has arrived (`data-complete`: the answer page
    reads its answers' text after drawing the first rows); `bypass_csp` ignores the page's own
    Content-Security-Policy.
    """
    context = browser.new_context(viewport={"width": 1400, "height": 900}, bypass_csp=bypass_csp)
    page = context.new_page()
    if requests is not None:
        page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    if ready:
        flag = "complete" if complete else "ready"
        page.wait_for_function(
            f"() => document.documentElement.dataset.{flag} === '1'", timeout=10_000
        )
    return page


def act(page, action) -> None:
    """Run `action` (a control change) and wait for the answer page to re-render after it (a
    typed value is debounced)."""
    before = int(page.evaluate("document.documentElement.dataset.renders || 0"))
    action()
    page.wait_for_function(f"() => Number(document.documentElement.dataset.renders) > {before}")


def file_url(path: Path) -> str:
    return path.resolve().as_uri()


# README's picture of the answer page: the demo's fine-tuned run, its lowest aligned scores first.
SCREENSHOT = REPO_ROOT / "config/report/answers_page.png"
SCREENSHOT_VIEW = "#target=runs%2Fdemo%2Ffinancial_r16_layer8&sort=primary.aligned&dir=asc"


def screenshot(page_path: Path, output: Path = SCREENSHOT, view: str = SCREENSHOT_VIEW) -> None:
    """Open `page_path` (an answers.html) at `view` in headless Chromium and save a PNG."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise SystemExit(f"no system Chromium: {INSTALL_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = open_page(browser, file_url(page_path) + view)
        page.screenshot(path=str(output))
        browser.close()


if __name__ == "__main__":
    # python tests/browser.py screenshot [ANSWERS_HTML]: regenerate README's screenshot from the
    # demo's page (run the demo first).
    import sys

    if sys.argv[1:2] != ["screenshot"]:
        raise SystemExit("usage: python tests/browser.py screenshot [ANSWERS_HTML]")
    default = REPO_ROOT / "experiments/demo/financial_r16_layer8/answers.html"
    screenshot(Path(sys.argv[2]) if len(sys.argv) > 2 else default)
    print(f"wrote {SCREENSHOT}")
