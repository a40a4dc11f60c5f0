"""The app package type-checks: `mypy` (configured in pyproject.toml) finds nothing in `app/`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_app_package_type_checks():
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, f"mypy found problems in app/:\n{result.stdout}{result.stderr}"
