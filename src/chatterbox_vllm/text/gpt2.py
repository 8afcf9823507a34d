"""Text -> T3 text-token ids for Chatterbox-Turbo and -Nano: GPT-2's byte-level BPE plus 19 paralinguistic tags.

The reference (`chatterbox-tts` 0.1.7, `tts_turbo.py`) tokenizes with `transformers.AutoTokenizer.from_pretrained(
checkpoint_dir)`, which reads the slow-tokenizer files of the Hugging Face repos `ResembleAI/chatterbox-turbo` and
`-nano` (file names listed in mlx-audio's Turbo conversion notes and read by chatterbox.cpp's
`convert-t3-turbo-to-gguf.py`) and builds a `tokenizers` pipeline from them. We build the same pipeline directly
with the `tokenizers` library, so the product does not need `transformers`:

* model: BPE over `vocab.json` + `merges.txt`, no unk token, no dropout, no subword prefix/suffix;
* pre-tokenizer: ByteLevel without a prefix space, with GPT-2's split regex; decoder: ByteLevel;
* no normalizer, and no BOS/EOS added (the reference's ids are the text's only);
* added tokens: `<|endoftext|>` (special) and every entry of `added_tokens.json` (the tags; non-special,
  no strip, matched anywhere, even glued to words) with the ids the file gives, unless `tokenizer_config.json`
  lists other flags for them in `added_tokens_decoder`.

Parity with transformers is checked by the golden fixtures of `tools/reference/make_turbo_text_fixtures.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from ..checkpoint.layout import GPT2_TOKENIZER_FILES, GPT2_TOKENIZER_OPTIONAL
from ..checkpoint.weights import CheckpointError

# The tokenizer files of the published Turbo/Nano repos (names in checkpoint/layout.py); the first three are required.
VOCAB_FILE, MERGES_FILE, ADDED_TOKENS_FILE = GPT2_TOKENIZER_FILES
TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE = GPT2_TOKENIZER_OPTIONAL
TOKENIZER_FILES = GPT2_TOKENIZER_FILES + GPT2_TOKENIZER_OPTIONAL
REQUIRED_FILES = GPT2_TOKENIZER_FILES

END_OF_TEXT = "<|endoftext|>"
# GPT-2's 50,257 tokens + the 19 tags: the size the reference checks (`len(tokenizer) != 50276` warns).
TURBO_VOCAB_SIZE = 50276
_ADDED_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


class GPT2TokenizerError(CheckpointError, ValueError):
    """A GPT-2 tokenizer directory is missing a file, or a file is malformed."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise GPT2TokenizerError(f"{path}: file is missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GPT2TokenizerError(f"{path}: cannot read JSON ({exc})") from exc


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not vocab:
        raise GPT2TokenizerError(f"{path}: expected a non-empty JSON object of token -> id")
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()):
        raise GPT2TokenizerError(f"{path}: every entry must map a string to a non-negative integer id")
    if len(set(vocab.values())) != len(vocab):
        raise GPT2TokenizerError(f"{path}: two tokens share an id")
    return vocab


def _read_merges(path: Path, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Merge rules in rank order; the `#version` header line is skipped as transformers does."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError as exc:
        raise GPT2TokenizerError(f"{path}: file is missing") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise GPT2TokenizerError(f"{path}: cannot read ({exc})") from exc
    merges: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise GPT2TokenizerError(f"{path}:{number}: expected two space-separated tokens, got {line!r}")
        if parts[0] not in vocab or parts[1] not in vocab or parts[0] + parts[1] not in vocab:
            raise GPT2TokenizerError(f"{path}:{number}: merge {line!r} uses or makes a token absent from vocab")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise GPT2TokenizerError(f"{path}: no merge rules")
    return merges


def _read_added(path: Path, vocab: dict[str, int]) -> dict[str, int]:
    added = _read_json(path)
    if not isinstance(added, dict):
        raise GPT2TokenizerError(f"{path}: expected a JSON object of token -> id")
    taken = set(vocab.values())
    for token, index in added.items():
        if not isinstance(token, str) or not token or type(index) is not int or index < 0:
            raise GPT2TokenizerError(f"{path}: bad entry {token!r}: {index!r}")
        if index in taken and vocab.get(token) != index:
            raise GPT2TokenizerError(f"{path}: id {index} of {token!r} is already used by another token")
        taken.add(index)
    return added


def _config_flags(path: Path) -> tuple[dict[str, dict[str, bool]], int | None]:
    """Per-token flags from `added_tokens_decoder` and `model_max_length`, when the optional config exists."""
    if not path.exists():
        return {}, None
    config = _read_json(path)
    if not isinstance(config, dict):
        raise GPT2TokenizerError(f"{path}: expected a JSON object")
    flags: dict[str, dict[str, bool]] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise GPT2TokenizerError(f"{path}: added_tokens_decoder must be an object")
    for entry in decoder.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            raise GPT2TokenizerError(f"{path}: bad added_tokens_decoder entry {entry!r}")
        flags[entry["content"]] = {k: bool(entry[k]) for k in _ADDED_FLAGS if k in entry}
    max_length = config.get("model_max_length")
    return flags, max_length if type(max_length) is int and max_length < 10**12 else None


def _added_entry(index: int, content: str, special: bool, overrides: dict[str, bool]) -> dict[str, Any]:
    # transformers' defaults for legacy added tokens: normalized unless special, never stripped.
    entry: dict[str, Any] = {
        "id": index,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": not special,
        "special": special,
    }
    entry.update(overrides)
    return entry


def _pipeline(vocab: dict[str, int], merges: list[tuple[str, str]], added: list[dict[str, Any]]) -> dict[str, Any]:
    """The `tokenizer.json` document that describes GPT-2's pipeline (see the module docstring)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


class GPT2TextTokenizer:
    """Turbo's/Nano's text tokenizer: ids identical to `AutoTokenizer.from_pretrained(dir)(text).input_ids`."""

    def __init__(self, tokenizer: Tokenizer, added_tokens: dict[str, int], model_max_length: int | None) -> None:
        self.tokenizer = tokenizer
        self.added_tokens = dict(added_tokens)
        # The reference passes truncation=True, which cuts ids at this length (1024 for GPT-2's config).
        self.model_max_length = model_max_length

    @classmethod
    def from_dir(cls, directory: str | Path) -> GPT2TextTokenizer:
        directory = Path(directory)
        if not directory.is_dir():
            raise GPT2TokenizerError(f"{directory}: not a tokenizer directory")
        missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
        if missing:
            raise GPT2TokenizerError(f"{directory}: missing tokenizer file(s) {', '.join(missing)}")
        vocab = _read_vocab(directory / VOCAB_FILE)
        merges = _read_merges(directory / MERGES_FILE, vocab)
        added = _read_added(directory / ADDED_TOKENS_FILE, vocab)
        flags, max_length = _config_flags(directory / TOKENIZER_CONFIG_FILE)
        entries: list[dict[str, Any]] = []
        if END_OF_TEXT in vocab:
            entries.append(_added_entry(vocab[END_OF_TEXT], END_OF_TEXT, True, flags.get(END_OF_TEXT, {})))
        for token, index in sorted(added.items(), key=lambda item: item[1]):
            if token != END_OF_TEXT:
                entries.append(_added_entry(index, token, False, flags.get(token, {})))
        try:
            tokenizer = Tokenizer.from_str(json.dumps(_pipeline(vocab, merges, entries)))
        except Exception as exc:  # the tokenizers library raises plain Exception subclasses
            raise GPT2TokenizerError(f"{directory}: cannot build the tokenizer ({exc})") from exc
        return cls(tokenizer, {t: i for t, i in added.items() if t != END_OF_TEXT}, max_length)

    @property
    def vocab_size(self) -> int:
        """`len(tokenizer)` of transformers: the vocabulary with the added tokens (50276 for the real files)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.token_to_id(END_OF_TEXT)

    def encode(self, text: str) -> list[int]:
        """Ids of already normalised text (see `normalize.punc_norm(text, turbo=True)`); no BOS/EOS, no truncation."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, index: int) -> str | None:
        return self.tokenizer.id_to_token(index)

    def tag_ids(self, tags: Sequence[str] | None = None) -> dict[str, int]:
        """Ids of the added tags (all, or those named) as this directory defines them."""
        if tags is None:
            return dict(self.added_tokens)
        return {t: self.added_tokens[t] for t in tags if t in self.added_tokens}
