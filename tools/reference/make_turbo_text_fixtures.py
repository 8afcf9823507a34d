"""Golden fixtures for Turbo's/Nano's text path from the reference, chatterbox-tts 0.1.7 (run in the oracle venv).

For each text of a varied corpus it records what the reference does in `ChatterboxTurboTTS.generate()`:
`tts_turbo.punc_norm(text)`, then `AutoTokenizer.from_pretrained(dir)` with `pad_token = eos_token` called as
`tokenizer(normalised, return_tensors="pt", padding=True, truncation=True).input_ids`; plus, to test the tokenizer
alone on text punc_norm would have changed (runs of spaces, newlines, tabs), the ids of the raw text
(`tokenizer(text).input_ids`) and `tokenizer.decode` of both. `dir` is the product's GPT-2 tokenizer directory
(`src/chatterbox_vllm/checkpoint/data/gpt2`, genuine GPT-2 BPE + the 19 tags); its files' sha256 are recorded so
the tests know the fixture was made from the same files. Does not import chatterbox_vllm.

    HF_HUB_OFFLINE=1 /work/oracle/venv/bin/python tools/reference/make_turbo_text_fixtures.py \
        [--tokenizer-dir src/chatterbox_vllm/checkpoint/data/gpt2] [--out tests/fixtures/golden/turbo_text]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from chatterbox.tts_turbo import punc_norm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")

CORPUS: list[str] = [
    "Hello there.",
    "",
    "hello world",
    "a",
    "   ",
    "Oh, that's hilarious! [laugh] Um anyway, we do have a new model in store. [chuckle]",
    "Hi there, Sarah here from MochaFone calling you back [chuckle], have you got one minute to chat?",
    "[clear throat] Listen up! [sniff] ugh! Did you just [groan] soil yourself? [cough] Well, [sigh] fine. [laugh]",
    "[whispering] There is someone in the hallway.",
    "[advertisement] Buy now! [happy][sarcastic] sure [surprised] [fear] [crying] [dramatic] [narration] [angry] "
    "[gasp] [shush]",
    "Hi[laugh]there, ha[chuckle]ha",
    "[laugh][chuckle][sigh]",
    "[laugh] at the start, and at the end [laugh]",
    "Glued to punctuation:[sigh], (yes[laugh]) and \"[gasp]\"!",
    "[Laugh] and [LAUGH] and [ laugh ] are not tags.",
    "An unknown [giggle] tag, a reference [1] and [citation needed].",
    "Text with [clear throat]glued and [clear  throat] doubled space",
    "Wait… what?",
    "He said: “goodbye”—then left.",
    "Dash – en and — em.",
    "It’s John’s ‘book’.",
    "Hello ,world , again",
    "Spaces    everywhere   \t and\ttabs",
    "Line one\nLine two\n\nLine three",
    "Mixed\r\nwindows\r\nnewlines",
    "   leading and trailing   ",
    "\u00a0non-breaking\u00a0spaces and zero\u200bwidth",
    "Numbers 1, 22 and 333! And 4.5 percent.",
    "Price: $5.99 – 50% off!!",
    "I'm, you're, they've, we'll, she'd, it's and O'Neil's",
    "Multiple!!! Exclamations??? And... dots",
    "Quotes \"double\" and 'single'",
    "Ends with a question?",
    "Ends with a dash -",
    "Ends with comma,",
    "ends with semicolon;",
    "Ends with colon:",
    "Emoji 😀🎉 and ✨ sparkles 👩‍👩‍👧",
    "Café naïve résumé — déjà vu",
    "ßtraße starts with a sharp s",
    "日本語のテキスト、そして中文。",
    "Привет, мир",
    "مرحبا بالعالم",
    "<|endoftext|> inside text",
    "The quick brown fox jumps over the lazy dog. [laugh] " * 120,
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO_ROOT / "src/chatterbox_vllm/checkpoint/data/gpt2")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests/fixtures/golden/turbo_text")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(str(args.tokenizer_dir))
    if tokenizer.pad_token is None:  # as tts_turbo.from_local does
        tokenizer.pad_token = tokenizer.eos_token

    cases = []
    for text in CORPUS:
        normalised = punc_norm(text)
        ids = tokenizer(normalised, return_tensors="pt", padding=True, truncation=True).input_ids[0].tolist()
        raw_ids = tokenizer(text).input_ids
        cases.append({
            "text": text,
            "punc_norm": normalised,
            "input_ids": ids,
            "untruncated_ids": tokenizer(normalised).input_ids,
            "decoded": tokenizer.decode(ids),
            "raw_ids": raw_ids,
            "raw_decoded": tokenizer.decode(raw_ids),
        })

    added = json.loads((args.tokenizer_dir / "added_tokens.json").read_text(encoding="utf-8"))
    document = {
        "about": "Reference Turbo/Nano text path: tts_turbo.punc_norm, then AutoTokenizer(dir) as generate() calls it",
        "reference": {
            "chatterbox-tts": importlib.metadata.version("chatterbox-tts"),
            "transformers": transformers.__version__,
            "tokenizers": importlib.metadata.version("tokenizers"),
            "tokenizer_class": type(tokenizer).__name__,
        },
        "tokenizer_files_sha256": {
            name: sha256(args.tokenizer_dir / name) for name in TOKENIZER_FILES if (args.tokenizer_dir / name).exists()
        },
        "len_tokenizer": len(tokenizer),
        "model_max_length": tokenizer.model_max_length,
        "eos_token_id": tokenizer.eos_token_id,
        "tag_ids": {tag: tokenizer.convert_tokens_to_ids(tag) for tag in sorted(added, key=added.get)},
        "cases": cases,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "turbo_text.json"
    out.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(cases)} cases, len(tokenizer)={len(tokenizer)}")


if __name__ == "__main__":
    main()
