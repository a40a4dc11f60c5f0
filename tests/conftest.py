"""Shared fixtures. Real servers on 127.0.0.1: the demo (app + sandbox), Orthanc, Redis, Chromium."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need(component: str, available: bool, how: str) -> None:
    """Skip when a real component is missing here; in CI a missing component is a failure."""
    if available:
        return
    message = f"{component} is not installed: {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # In CI a skipped test means a component did not run: that must not pass silently.
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if IN_CI and skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(f"CI=true: {skipped} test(s) skipped; every component must run in CI.", red=True)
