"""The code's habits, checked with every test run (CI included): ruff's lint and format and mypy report nothing on
src/ (their settings are in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command",
    [["ruff", "check", "src"], ["ruff", "format", "--check", "src"], ["mypy"]],
    ids=["ruff-lint", "ruff-format", "mypy"],
)
def test_no_findings_on_src(command: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
