"""benchmarks/results/ holds the reports the docs cite, and nothing else: every results file BENCHMARKS.md or
README.md names exists, and every file there is named (a file in a plot folder counts when its folder is named).
Reports no longer cited live on in `history.jsonl`, one JSON object per former file under its old name."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
HISTORY = RESULTS / "history.jsonl"
DOCS = ("BENCHMARKS.md", "README.md")
# A results file's name (cpu-2026-12-02-t3-host-step.json, benchmarks/results-t3-vllm-h100-2026-11-24.json) or a plot
# folder (plots-h100-2026-11-28-b/), as the docs write them; globs (`-t3-profile*`) are not names.
NAME = re.compile(r"(?<![\w*/-])(?:benchmarks/(?:results/)?)?((?:results-|plots-)?[a-z][a-z0-9-]*?\d{4}-\d\d-\d\d[\w.-]*?)"
                  r"(\.json|\.png|\.txt|/)?(?![\w*-])")  # fmt: skip


def cited() -> dict[str, str]:
    """Path under benchmarks/ -> the document that cites it."""
    names: dict[str, str] = {}
    for doc in DOCS:
        for match in NAME.finditer((REPO / doc).read_text()):
            stem, suffix = match.group(1), match.group(2) or ""
            if not suffix or stem.startswith("plots-") != (suffix == "/"):
                continue  # a date in prose, or not a file name
            folder = "" if stem.startswith("results-") else "results/"
            names.setdefault(folder + stem + suffix.rstrip("/"), doc)
    return names


def test_every_cited_results_file_exists() -> None:
    missing = {path: doc for path, doc in cited().items() if not (BENCHMARKS / path).exists()}
    assert not missing, missing


def test_every_results_file_is_cited() -> None:
    names = cited()
    uncited = []
    for path in sorted(RESULTS.rglob("*")):
        if path.is_dir() or path == HISTORY:
            continue
        relative = path.relative_to(BENCHMARKS)
        if str(relative) not in names and str(relative.parent) not in names:
            uncited.append(str(relative))
    assert not uncited, f"not cited by {' or '.join(DOCS)} (move them into {HISTORY.name}): {uncited}"
    top = sorted(p.name for p in BENCHMARKS.glob("results-*") if p.name not in names)
    assert not top, top


def test_history_holds_former_reports_once_each() -> None:
    entries = [json.loads(line) for line in HISTORY.read_text().splitlines()]
    files = [entry["file"] for entry in entries]
    assert entries and all(set(entry) == {"file", "report"} for entry in entries)
    assert len(set(files)) == len(files)
    assert not {f"results/{name}" for name in files} & set(cited()), "a cited report belongs in results/, not here"
