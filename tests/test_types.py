"""core/ type-checks strictly (mypy, settings in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path


def test_core_type_checks_strictly():
    root = Path(__file__).parents[1]
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
