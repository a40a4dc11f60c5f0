"""A browser page that fails its test on any uncaught script error (shared by the browser specs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def checked_page(browser, width: int = 1000, height: int = 900) -> Iterator:
    """A new context and page; on leaving, the page must have thrown no uncaught error."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield page
        assert errors == []
    finally:
        context.close()


@contextmanager
def browser_demo(**options) -> Iterator:
    """The demo (app + sandbox) for a browser spec module; Chromium must be installed. `options` go to serve_demo."""
    from sandbox.demo import serve_demo
    from tests.conftest import CHROMIUM, need

    need("Chromium", CHROMIUM.exists(), "apt-get install chromium")
    with serve_demo(**options) as running:
        yield running


@pytest.fixture(scope="module")
def demo():
    """browser_demo(), one per module, for the modules that take it by name: `demo = browser_pages.demo` (assigned,
    not imported: ruff would read an imported fixture as unused and each test's argument as redefining it)."""
    with browser_demo() as running:
        yield running


@pytest.fixture
def page(browser) -> Iterator:
    """checked_page(browser): a page whose uncaught script errors fail the test."""
    with checked_page(browser) as page:
        yield page
