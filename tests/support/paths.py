"""Where the repository, the golden fixtures and the weight manifests are.

Golden fixtures come from the reference implementation run by `tools/reference` (ours, in tests/fixtures/golden)
and, when the shared reference kit sits beside the repository, from the kit as an independent cross-check.
Both use the same tensor names, so parity tests run over every directory that exists."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OUR_GOLDEN = REPO_ROOT / "tests" / "fixtures" / "golden"
KIT_ROOT = REPO_ROOT.parent / "shared" / "reference"
KIT_GOLDEN = KIT_ROOT / "golden"
OUR_MANIFESTS = REPO_ROOT / "tools" / "reference" / "manifests"
KIT_MANIFESTS = KIT_ROOT / "manifests"


def golden_dirs() -> list[Path]:
    """Every golden-fixture directory present: ours first, then the shared kit's."""
    return [d for d in (OUR_GOLDEN, KIT_GOLDEN) if (d / "summary.json").is_file() or any(d.glob("*.json"))]


def golden_params() -> list:
    """`pytest.mark.parametrize` values over golden directories, with readable ids."""
    dirs = golden_dirs()
    if not dirs:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no golden fixtures present"))]
    return [pytest.param(d, id=golden_id(d)) for d in dirs]


def golden_id(directory: Path) -> str:
    """'ours' (tests/fixtures/golden) or 'kit' (the shared reference kit): test ids and parity-metric cases."""
    return "ours" if directory == OUR_GOLDEN else "kit"


def manifest_path(name: str) -> Path:
    """Manifest JSON of a published file (e.g. 't3_cfg.safetensors.json'): ours if committed, else the kit's."""
    for root in (OUR_MANIFESTS, KIT_MANIFESTS):
        if (root / name).is_file():
            return root / name
    pytest.skip(f"manifest {name} not present")
