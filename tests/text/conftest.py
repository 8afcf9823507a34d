"""Fixtures of the text tests: the multilingual tokenizer of the seed-0 checkpoint, without its weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatterbox_vllm.checkpoint.layout import MULTILINGUAL
from chatterbox_vllm.random_checkpoint import write_tokenizer_files
from chatterbox_vllm.text.tokenizers import MultilingualTokenizer


@pytest.fixture(scope="module")
def multilingual_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The seed-0 checkpoint's (synthetic) grapheme tokenizer and Cangjie table, without its 3 GB of weights."""
    out = tmp_path_factory.mktemp("multilingual_tokenizer")
    write_tokenizer_files(MULTILINGUAL, out)
    assert MULTILINGUAL.cangjie_table is not None
    return out / MULTILINGUAL.text_tokenizer, out / MULTILINGUAL.cangjie_table


@pytest.fixture(scope="module")
def multilingual_tokenizer(multilingual_files: tuple[Path, Path]) -> MultilingualTokenizer:
    # Without word segmentation, as the reference made the fixture (spacy-pkuseg absent), wherever this runs.
    return MultilingualTokenizer.from_files(*multilingual_files, segmenter=None)
