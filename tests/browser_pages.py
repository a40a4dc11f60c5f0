"""A browser page that fails its test on any uncaught script error (shared by the browser specs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


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
