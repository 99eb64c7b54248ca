"""The public API is typed: mypy --strict passes on router/, providers/ and policies/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_is_clean() -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        unavailable("mypy is not installed: pip install -e '.[test]'")
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
