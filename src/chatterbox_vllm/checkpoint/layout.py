"""File names of the published Chatterbox checkpoints (Hugging Face `ResembleAI/chatterbox`, `-turbo`, `-nano`).

The names are the real ones so that a directory downloaded from the hub and a random checkpoint made by
`chatterbox-vllm make-checkpoint` load through exactly the same code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# A model family's name (`families`): "english", "multilingual", "turbo", "nano" or one registered later.
Variant = str

HF_REPO_ID = "ResembleAI/chatterbox"
TURBO_REPO_ID = "ResembleAI/chatterbox-turbo"
NANO_REPO_ID = "ResembleAI/chatterbox-nano"
# Turbo's and Nano's GPT-2 tokenizer, read by the reference with `AutoTokenizer.from_pretrained(checkpoint_dir)`:
# three files it needs, two more it reads when present (see text/gpt2.py).
GPT2_TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json")
GPT2_TOKENIZER_OPTIONAL = ("tokenizer_config.json", "special_tokens_map.json")

# Written by make-checkpoint next to the weights; absent in published checkpoints (which are full size).
CONFIG_FILE = "chatterbox_config.json"


@dataclass(frozen=True)
class CheckpointLayout:
    """Which file holds which component for one model variant."""

    variant: Variant
    voice_encoder: str
    t3: str
    s3gen: str
    conds: str
    text_tokenizer: str
    cangjie_table: str | None = None
    repo_id: str = HF_REPO_ID
    # More files of the text tokenizer, beside `text_tokenizer` (GPT-2's merges and added tags).
    tokenizer_extras: tuple[str, ...] = ()
    # Fetched with the rest when the repo has them, not required (GPT-2's tokenizer config).
    optional_files: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        names = (self.voice_encoder, self.t3, self.s3gen, self.conds, self.text_tokenizer, *self.tokenizer_extras)
        return names + ((self.cangjie_table,) if self.cangjie_table else ())

    @property
    def family(self) -> Any:
        """The registered `families.ModelFamily` these files belong to."""
        from .. import families

        return families.get(self.variant)


class _Layouts(Mapping[str, CheckpointLayout]):
    """Each registered family's layout by name, read from the registry when asked (families register later)."""

    def __getitem__(self, name: str) -> CheckpointLayout:
        from .. import families

        try:
            return families.get(name).layout
        except ValueError:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        from .. import families

        return iter(families.names())

    def __len__(self) -> int:
        from .. import families

        return len(families.names())


LAYOUTS: Mapping[str, CheckpointLayout] = _Layouts()
_FAMILY_LAYOUTS = {"ENGLISH": "english", "MULTILINGUAL": "multilingual", "TURBO": "turbo", "NANO": "nano"}


def __getattr__(name: str) -> Any:
    """`ENGLISH`, `MULTILINGUAL`, `TURBO`, `NANO`: the published families' layouts, declared in `families`."""
    if name in _FAMILY_LAYOUTS:
        return LAYOUTS[_FAMILY_LAYOUTS[name]]
    raise AttributeError(name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_FAMILY_LAYOUTS])
