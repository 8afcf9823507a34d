"""The GPU machine's staging lists cover the product: a dependency missing there fails a whole device call (a server
that exits at import), which costs minutes of scarce device time. Every runtime dependency in pyproject.toml is on
the machine's image, in vLLM's own staging list, in the product's list, or named as not carried (with why)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from support.paths import REPO_ROOT as REPO

PRODUCT_LIST = REPO / "benchmarks" / "device" / "product-wheels.txt"
VLLM_LIST = REPO.parent / "shared" / "device" / "vllm-0.26-deps.txt"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(lines: list[str]) -> set[str]:
    """Package names of requirement lines (`name==1.0`, `name>=1`), comments and blanks skipped."""
    names = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonical(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    return names


def commented(lines: list[str], label: str) -> set[str]:
    """The names a `# <label>: a b c` comment line lists (before any parenthesis)."""
    for line in lines:
        if line.startswith(f"# {label}:"):
            return {canonical(word) for word in line.split(":", 1)[1].split("(")[0].split()} - {"none"}
    raise AssertionError(f"{PRODUCT_LIST.name} has no '# {label}:' line")


def test_every_dependency_reaches_the_gpu_machine() -> None:
    if not VLLM_LIST.is_file():
        pytest.skip(f"no {VLLM_LIST} (the shared device kit) beside this checkout")
    product = PRODUCT_LIST.read_text().splitlines()
    covered = (requirement_names(product) | requirement_names(VLLM_LIST.read_text().splitlines())
               | commented(product, "The image already has") | commented(product, "Not carried"))  # fmt: skip
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = requirement_names(pyproject["project"]["dependencies"])
    assert needed - covered == set(), f"add these to {PRODUCT_LIST.name} (pinned as CI runs them)"
