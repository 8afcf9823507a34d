"""The installed vLLM offers every interface the T3 engine relies on (tools/check_vllm_api.py; the same script
checks releases that cannot be installed here, from their unpacked wheels)."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import pytest

spec = importlib.util.find_spec("vllm")
pytestmark = pytest.mark.skipif(spec is None or spec.origin is None, reason="vLLM is not installed")

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_vllm_api.py"


def test_installed_vllm_has_every_interface_we_use() -> None:
    checks = runpy.run_path(str(SCRIPT))["checks"]
    results = checks(Path(spec.origin).parent)
    assert len(results) >= 10
    assert [name for name, ok in results if not ok] == []


def test_the_check_fails_on_a_tree_without_them(tmp_path: Path) -> None:
    checks = runpy.run_path(str(SCRIPT))["checks"]
    assert not any(ok for _, ok in checks(tmp_path))
