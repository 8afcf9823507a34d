"""benchmarks/ is a package run from the repository root (`python -m benchmarks.<name>`): every module imports that
way with no sys.path edits, and the server's package never imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if p.stem != "__init__")


def test_every_benchmark_imports_as_a_module_of_the_package() -> None:
    assert not [m for m in MODULES if "sys.path" in (REPO / "benchmarks" / f"{m}.py").read_text()]
    code = "import importlib\n" + "".join(f"importlib.import_module('benchmarks.{m}')\n" for m in MODULES)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_the_package_never_imports_the_benchmarks() -> None:
    offenders = []
    for path in (REPO / "src" / "chatterbox_vllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(name == "benchmarks" or name.startswith("benchmarks.") for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
