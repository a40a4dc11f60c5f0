"""Fixtures for the modules whose `demo` fixture serves the demo: `sandbox_state = demo_fixtures.sandbox_state`.

Assigned by name rather than imported, as in tests/launching.py: ruff would read an imported fixture as
unused and each test's argument as redefining it.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def sandbox_state(demo):
    """The running sandbox's state (`delays`, `faults`) for a test to set; cleared after the test."""
    state = demo.sandbox.extensions["sandbox"]
    yield state
    state.delays.clear()
    state.faults.clear()
