"""engines/, common/ and the training loop (trainer/loop.py, trainer/placement.py) are clean under mypy (pyproject.toml [tool.mypy]); a finding fails CI by this test."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (it comes with the dev extra: pip install -e '.[dev]')")
def test_mypy_finds_nothing():
    # The files and settings are pyproject.toml's; no cache, so a stale one never hides a finding.
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--no-incremental",
                             "--cache-dir", "/dev/null"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"mypy found:\n{result.stdout}{result.stderr}"
