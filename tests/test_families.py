"""Model families (issue 21): the registry, what each published family declares, and that no module outside
`families/` tells the variants apart by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chatterbox_vllm import families
from chatterbox_vllm.checkpoint.hub import MODEL_ALIASES, RANDOM_MODELS
from chatterbox_vllm.checkpoint.layout import LAYOUTS
from chatterbox_vllm.engine.base import SamplingParams

SRC = Path(__file__).resolve().parents[1] / "src" / "chatterbox_vllm"
NAMES = "english|multilingual|turbo|nano"
# A variant name compared, tested for membership, or listed in a set/tuple/dict of names; `is_gpt2`-style flags.
COMPARISONS = [
    re.compile(rf"""(==|!=|\bin)\s*[(\[{{]?\s*["']({NAMES})["']"""),
    re.compile(rf"""["']({NAMES})["']\s*(==|!=|,\s*["']({NAMES})["'])"""),
    re.compile(rf"""["']({NAMES})["']\s*:\s*"""),
    re.compile(r"\bvariant\s*(==|!=)"),
    re.compile(r"\b(is_gpt2|is_multilingual|is_turbo|is_nano)\b"),
]
# Outside families/, with why.
ALLOWED = {
    # ENGLISH, MULTILINGUAL, TURBO, NANO: the old module constants, looked up in the registry by name.
    "checkpoint/layout.py",
}


def _offending_lines() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("families/") or relative in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(pattern.search(code) for pattern in COMPARISONS):
                found.append(f"{relative}:{number}: {line.strip()}")
    return found


def test_no_module_outside_families_compares_variant_names() -> None:
    assert _offending_lines() == []


def test_the_check_would_see_a_comparison(tmp_path: Path) -> None:
    lines = ['if layout.variant == "english":', 'gpt2 = variant in ("turbo", "nano")', "if config.is_gpt2:",
             'presets = {"english": 1}', 'x = name == "nano"']  # fmt: skip
    assert all(any(p.search(line) for p in COMPARISONS) for line in lines)
    assert not any(p.search('download("english", revision=r)') for p in COMPARISONS)


def test_the_published_families_are_registered_in_order() -> None:
    assert families.names() == ("english", "multilingual", "turbo", "nano")
    assert list(LAYOUTS) == list(families.names())
    assert dict(MODEL_ALIASES)["mtl"] == "multilingual" and dict(RANDOM_MODELS)["random-tiny-nano"] == "nano"
    with pytest.raises(ValueError, match="unknown model family"):
        families.get("klingon")


@pytest.mark.parametrize("name", ["english", "multilingual", "turbo", "nano"])
def test_what_each_family_declares(name: str) -> None:
    family = families.get(name)
    gpt2 = name in ("turbo", "nano")
    assert family.layout.variant == name and family.layout.family is family
    assert family.t3_backbone == ("gpt2" if gpt2 else "llama")
    assert family.mean_flow == family.s3gen_config().meanflow == gpt2
    assert family.uses_cfg == (not gpt2) == family.t3_config().supports_cfg
    assert family.paralinguistic_tags == gpt2 and family.tail_tokens == (3 if gpt2 else 0)
    assert family.keeps_last_token_audio == gpt2
    assert family.voice_loudness_lufs == (-27.0 if gpt2 else None)
    assert family.min_voice_seconds == (5.0 if gpt2 else 0.5)
    assert family.multilingual == (name == "multilingual")
    assert len(family.languages) == (23 if family.multilingual else 1)
    defaults = family.sampling_defaults()
    assert defaults == (SamplingParams.turbo() if gpt2 else SamplingParams())
    tiny = family.t3_config("tiny")
    full = family.t3_config()
    assert (tiny.backbone, tiny.text_tokens_dict_size) == (full.backbone, full.text_tokens_dict_size)
    assert tiny.hidden_size == 64
