"""Turbo/Nano text path: punc_norm and GPT-2 ids equal the reference's recorded outputs; tag handling; bad files."""

from __future__ import annotations

import hashlib
import json
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from chatterbox_vllm.checkpoint.weights import CheckpointError
from chatterbox_vllm.text.gpt2 import (
    REQUIRED_FILES,
    TOKENIZER_FILES,
    TURBO_VOCAB_SIZE,
    GPT2TextTokenizer,
    GPT2TokenizerError,
)
from chatterbox_vllm.text.paralinguistic import (
    SOUND_TAGS,
    STYLE_TAGS,
    TURBO_TAGS,
    find_tags,
    find_unknown_bracketed,
    prepare_tags,
    strip_tags,
    supports_tags,
)
from chatterbox_vllm.text.normalize import EMPTY_TEXT_SENTENCE
from chatterbox_vllm.text.normalize import punc_norm as _punc_norm

punc_norm = partial(_punc_norm, turbo=True)

REPO_ROOT = Path(__file__).resolve().parents[2]
GPT2_DIR = REPO_ROOT / "src/chatterbox_vllm/checkpoint/data/gpt2"
GOLDEN = REPO_ROOT / "tests/fixtures/golden/turbo_text/turbo_text.json"
DOCUMENT: dict[str, Any] = json.loads(GOLDEN.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = DOCUMENT["cases"]


def _case_id(case: dict[str, Any]) -> str:
    return repr(case["text"][:32])


@pytest.fixture(scope="module")
def tokenizer() -> GPT2TextTokenizer:
    return GPT2TextTokenizer.from_dir(GPT2_DIR)


# --- the shipped tokenizer directory -------------------------------------------------------------------------------


def test_fixture_was_made_from_the_shipped_files() -> None:
    recorded = DOCUMENT["tokenizer_files_sha256"]
    assert set(recorded) == set(TOKENIZER_FILES)
    for name, digest in recorded.items():
        assert hashlib.sha256((GPT2_DIR / name).read_bytes()).hexdigest() == digest, name


def test_vocabulary_size_and_tags(tokenizer: GPT2TextTokenizer) -> None:
    assert tokenizer.vocab_size == DOCUMENT["len_tokenizer"] == TURBO_VOCAB_SIZE
    assert tokenizer.eos_token_id == DOCUMENT["eos_token_id"] == 50256
    assert tokenizer.model_max_length == DOCUMENT["model_max_length"] == 1024
    assert tokenizer.tag_ids() == DOCUMENT["tag_ids"]
    assert set(tokenizer.tag_ids()) == set(TURBO_TAGS)
    assert sorted(tokenizer.tag_ids().values()) == list(range(50257, 50276))
    assert tokenizer.tag_ids(["[laugh]", "[nope]"]) == {"[laugh]": DOCUMENT["tag_ids"]["[laugh]"]}
    for tag, index in DOCUMENT["tag_ids"].items():
        assert tokenizer.token_to_id(tag) == index and tokenizer.id_to_token(index) == tag


def test_tag_vocabulary() -> None:
    assert len(TURBO_TAGS) == len(set(TURBO_TAGS)) == 19
    assert len(SOUND_TAGS) == 9 and len(STYLE_TAGS) == 10
    assert all(t.startswith("[") and t.endswith("]") and t == t.lower() for t in TURBO_TAGS)


# --- parity with the reference -------------------------------------------------------------------------------------


def test_corpus_is_varied() -> None:
    texts = [c["text"] for c in CASES]
    assert len(texts) >= 40 and "" in texts
    assert any("\n" in t for t in texts) and any("  " in t for t in texts) and any("😀" in t for t in texts)
    assert any(len(c["untruncated_ids"]) > DOCUMENT["model_max_length"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_punc_norm_matches_reference(case: dict[str, Any]) -> None:
    assert punc_norm(case["text"]) == case["punc_norm"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_ids_match_reference(tokenizer: GPT2TextTokenizer, case: dict[str, Any]) -> None:
    ids = tokenizer.encode(case["punc_norm"])
    assert ids == case["untruncated_ids"]
    # generate() passes truncation=True: the reference cuts at model_max_length.
    assert ids[: tokenizer.model_max_length] == case["input_ids"]
    assert tokenizer.encode(case["text"]) == case["raw_ids"]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decode_matches_reference(tokenizer: GPT2TextTokenizer, case: dict[str, Any]) -> None:
    assert tokenizer.decode(case["input_ids"]) == case["decoded"]
    assert tokenizer.decode(case["raw_ids"]) == case["raw_decoded"]


def test_tags_are_single_tokens_even_glued(tokenizer: GPT2TextTokenizer) -> None:
    laugh = tokenizer.tag_ids()["[laugh]"]
    assert laugh in tokenizer.encode("Hi[laugh]there")
    assert tokenizer.encode("[laugh]") == [laugh]
    assert laugh not in tokenizer.encode("[Laugh]")  # case matters to the tokenizer: read aloud as text
    assert tokenizer.decode(tokenizer.encode("x [clear throat] y")) == "x [clear throat] y"


def test_empty_text_becomes_the_reference_sentence() -> None:
    assert punc_norm("") == EMPTY_TEXT_SENTENCE
    assert punc_norm("   ") == "."
    assert punc_norm("ßtraße") == "SStraße."


# --- tags ----------------------------------------------------------------------------------------------------------


def test_find_tags() -> None:
    text = "Hi[laugh]there [Sigh] and [sigh] [clear throat]"
    assert [(m.tag, m.written) for m in find_tags(text)] == [
        ("[laugh]", "[laugh]"), ("[sigh]", "[sigh]"), ("[clear throat]", "[clear throat]"),
    ]  # fmt: skip
    found = find_tags(text, ignore_case=True)
    assert [m.tag for m in found] == ["[laugh]", "[sigh]", "[sigh]", "[clear throat]"]
    assert found[1].written == "[Sigh]" and text[found[1].start : found[1].end] == "[Sigh]"
    assert find_unknown_bracketed("[giggle] [Laugh] [laugh] [1] [citation needed]") == [
        "[giggle]", "[Laugh]", "[1]", "[citation needed]",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "clean", "removed"),
    [
        ("Hello [laugh] there.", "Hello there.", ["[laugh]"]),
        ("[laugh] Hello.", "Hello.", ["[laugh]"]),
        ("Hello. [laugh]", "Hello.", ["[laugh]"]),
        ("Funny [laugh].", "Funny.", ["[laugh]"]),
        ("Funny [laugh]!", "Funny!", ["[laugh]"]),
        ("Hi[laugh]there", "Hi there", ["[laugh]"]),
        ("ha[chuckle], ok", "ha, ok", ["[chuckle]"]),
        ("Well, [sigh], okay.", "Well, okay.", ["[sigh]"]),
        ("Wait, [laugh]. Okay", "Wait. Okay", ["[laugh]"]),
        ("[sigh], well then.", "well then.", ["[sigh]"]),
        ("(yes [laugh])", "(yes)", ["[laugh]"]),
        ('"[gasp]Really?"', '"Really?"', ["[gasp]"]),
        ("a [laugh] [sigh]  b", "a b", ["[laugh]", "[sigh]"]),
        ("[laugh][chuckle][sigh]", "", ["[laugh]", "[chuckle]", "[sigh]"]),
        ("[Laugh] Hello [COUGH] there", "Hello there", ["[laugh]", "[cough]"]),
        ("Line one [laugh]\n[sigh] Line two", "Line one\nLine two", ["[laugh]", "[sigh]"]),
        ("a\n[laugh]\nb", "a\nb", ["[laugh]"]),
        ("[laugh]\nHello [sigh]\n", "Hello", ["[laugh]", "[sigh]"]),
        ("[clear throat] Listen up! [sniff] ugh!", "Listen up! ugh!", ["[clear throat]", "[sniff]"]),
        ("See [1] and [citation needed] [giggle].", "See [1] and [citation needed] [giggle].", []),
        ("Keep  my   spacing [laugh] here", "Keep  my   spacing here", ["[laugh]"]),
        ("No tags at all.", "No tags at all.", []),
    ],
)
def test_strip_tags(text: str, clean: str, removed: list[str]) -> None:
    assert strip_tags(text) == (clean, removed)


def test_strip_tags_exact_case_only() -> None:
    assert strip_tags("[Laugh] hi [laugh]", ignore_case=False) == ("[Laugh] hi", ["[laugh]"])


def test_tags_pass_through_for_turbo_and_nano() -> None:
    text = "Oh, that's hilarious! [laugh] Um anyway [Chuckle]"
    assert supports_tags("turbo") and supports_tags("nano") and not supports_tags("english")
    assert prepare_tags(text, "turbo") == (text, []) and prepare_tags(text, "nano") == (text, [])
    assert prepare_tags(text, "english") == ("Oh, that's hilarious! Um anyway", ["[laugh]", "[chuckle]"])
    assert prepare_tags(text, "multilingual")[1] == ["[laugh]", "[chuckle]"]


# --- bad directories -----------------------------------------------------------------------------------------------


def _toy_dir(root: Path, **overrides: str) -> Path:
    """A tiny but valid GPT-2 style directory; `overrides` replace file contents by name (None-like "" deletes)."""
    files = {
        "vocab.json": json.dumps({"a": 0, "b": 1, "ab": 2, "Ġ": 3, "<|endoftext|>": 4}),
        "merges.txt": "#version: 0.2\na b\n",
        "added_tokens.json": json.dumps({"[laugh]": 5, "[sigh]": 6}),
    }
    files.update({k.replace("__", "."): v for k, v in overrides.items()})
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content:
            (root / name).write_text(content, encoding="utf-8")
    return root


def test_toy_directory_loads(tmp_path: Path) -> None:
    tok = GPT2TextTokenizer.from_dir(_toy_dir(tmp_path / "toy"))
    assert tok.vocab_size == 7 and tok.model_max_length is None
    assert tok.encode("ab[laugh]a b[sigh]") == [2, 5, 0, 3, 1, 6]
    assert tok.decode([2, 5, 0, 3, 1, 6]) == "ab[laugh]a b[sigh]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab__json": ""}, "missing tokenizer file(s) vocab.json"),
        ({"merges__txt": ""}, "missing tokenizer file(s) merges.txt"),
        ({"added_tokens__json": ""}, "missing tokenizer file(s) added_tokens.json"),
        ({"vocab__json": "{not json"}, "cannot read JSON"),
        ({"vocab__json": "[1, 2]"}, "expected a non-empty JSON object"),
        ({"vocab__json": json.dumps({"a": 0, "b": "1"})}, "non-negative integer id"),
        ({"vocab__json": json.dumps({"a": 0, "b": 0})}, "two tokens share an id"),
        ({"merges__txt": "#version: 0.2\na b c\n"}, "merges.txt:2: expected two space-separated tokens"),
        ({"merges__txt": "#version: 0.2\na z\n"}, "absent from vocab"),
        ({"merges__txt": "#version: 0.2\n"}, "no merge rules"),
        ({"added_tokens__json": json.dumps({"[laugh]": "5"})}, "bad entry"),
        ({"added_tokens__json": json.dumps({"[laugh]": 2})}, "id 2 of '[laugh]' is already used"),
        ({"added_tokens__json": json.dumps({"[laugh]": 5, "[sigh]": 5})}, "id 5 of '[sigh]' is already used"),
        ({"tokenizer_config__json": "[]"}, "expected a JSON object"),
    ],
)
def test_bad_directory_errors(tmp_path: Path, overrides: dict[str, str], message: str) -> None:
    directory = _toy_dir(tmp_path / "bad", **overrides)
    with pytest.raises(GPT2TokenizerError, match=None) as info:
        GPT2TextTokenizer.from_dir(directory)
    assert message in str(info.value) and str(directory) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, CheckpointError)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(GPT2TokenizerError, match="not a tokenizer directory"):
        GPT2TextTokenizer.from_dir(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GPT2TokenizerError, match="not a tokenizer directory"):
        GPT2TextTokenizer.from_dir(tmp_path / "file")


def test_a_copy_of_the_shipped_files_loads_from_any_path(tmp_path: Path) -> None:
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for name in REQUIRED_FILES:
        shutil.copy(GPT2_DIR / name, copy / name)
    tok = GPT2TextTokenizer.from_dir(copy)
    assert tok.vocab_size == TURBO_VOCAB_SIZE and tok.model_max_length is None
    assert tok.encode(CASES[5]["punc_norm"]) == CASES[5]["input_ids"]
