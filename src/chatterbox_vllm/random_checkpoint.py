"""Deterministic random-weight checkpoints in the exact layout of the published ones.

Test and demo code, kept apart from the runtime: `chatterbox-vllm make-checkpoint` and the `random-tiny` model names
(`checkpoint.hub.RANDOM_MODELS`, which imports this module only when one of them is asked for) use it; loading a
checkpoint never does (tests/test_runtime_imports.py checks that).

Tests and demos need checkpoints without downloading 3 GB of real weights. A random checkpoint has the real file
names and formats, so it goes through exactly the loading code a downloaded one does:

* the weight files hold every tensor the reference loaders expect (names, shapes, dtypes come from our own modules
  built on the meta device; at full size they equal the published files' manifests);
* each value is a pure function of `(seed, tensor name)`, so any single tensor can be regenerated on its own and
  the seed-0 full-size files can be checked tensor by tensor against `manifests/checksums_seed0.json`;
* `conds.pt`, the text tokenizer and (multilingual) the Cangjie table complete the directory. The multilingual
  tokenizer and Cangjie table are synthetic stand-ins (the published ones are not available to us): the pipeline
  is exercised, the multilingual token ids are not the real ones.

Size "tiny" keeps every vocabulary, token id and rate but shrinks widths/depths; its dimensions are recorded in
`chatterbox_config.json` (the published checkpoints, all full size, have no such file), and so is a speaking pace:
random weights never sample the stop token, so without it every text piece would run to max_new_tokens.

    python -m chatterbox_vllm.random_checkpoint --variant english --size tiny --seed 0 --out /tmp/ckpt
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import stat
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from torch import nn

from . import families
from .checkpoint.config import load_model_config
from .checkpoint.layout import CONFIG_FILE, HF_REPO_ID, CheckpointLayout
from .families import ModelFamily

logger = logging.getLogger(__name__)

Size = Literal["full", "tiny"]
SIZES: tuple[str, ...] = ("full", "tiny")
CONFIG_FORMAT = 1

DATA_DIR = Path(__file__).resolve().parent / "checkpoint" / "data"
ENGLISH_TOKENIZER = DATA_DIR / "tokenizer.json"  # the genuine published English tokenizer (sha256 d71e3a44...)
GPT2_TOKENIZER_DIR = DATA_DIR / "gpt2"  # Turbo's and Nano's tokenizer files (provenance in its README)

# The published s3gen.safetensors lacks the S3 tokenizer's Hann window (the reference loads it with strict=False and
# keeps the constructed value); s3gen.pt has it.
ABSENT_FROM_FILE: dict[str, frozenset[str]] = {"s3gen.safetensors": frozenset({"tokenizer.window"})}
# Persistent buffers that are not learned: they get the value the module computes at construction.
FIXED_BUFFERS = ("tokenizer._mel_filters", "tokenizer.window")

SPEECH_VOCAB = 6561  # valid S3 speech tokens are 0..6560
# A family's built-in voice prompt lengths and the speaking pace of its tiny checkpoints: `RandomRecipe` in the
# family's module (`families`).
CONDS_SPEAKER_DIM = 256
CONDS_XVECTOR_DIM = 192
CONDS_MELS = 80

# Hugging Face cache layout inside a multilingual checkpoint: the reference fetches the Cangjie table with
# hf_hub_download(..., cache_dir=<checkpoint dir>), which resolves offline against refs/main -> snapshots/<rev>.
HF_CACHE_REVISION = "0" * 40


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


# ----------------------------------------------------------------------------------------------- model configs
def model_config(component: str, variant: str | ModelFamily, size: str) -> Any:
    """Config of one network ("t3", "s3gen", "voice_encoder") of a checkpoint (imports kept lazy). `variant`: a
    registered family's name, or the family itself."""
    family = _check_args(variant, size)
    tiny = size == "tiny"
    if component == "t3":
        return family.t3_config(size)
    if component == "s3gen":
        return family.s3gen_config(size)
    if component == "voice_encoder":
        from .models.voice_encoder import VoiceEncoderConfig

        return VoiceEncoderConfig.tiny() if tiny else VoiceEncoderConfig()
    raise ValueError(f"unknown component {component!r}")


def model_configs(variant: str | ModelFamily, size: str) -> dict[str, Any]:
    """The configs of the three networks, as recorded in `chatterbox_config.json`."""
    return {c: model_config(c, variant, size) for c in ("t3", "s3gen", "voice_encoder")}


def _check_args(variant: str | ModelFamily, size: str) -> ModelFamily:
    """The family `variant` names (or is); ValueError for an unknown one or size."""
    if isinstance(variant, str) and variant not in families.names():
        raise ValueError(f"unknown variant {variant!r} (expected one of {sorted(families.names())})")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (expected one of {SIZES})")
    return families.resolve(variant)


# ------------------------------------------------------------------------------------------------ tensor specs
def _meta_specs(build: Callable[[], nn.Module]) -> list[TensorSpec]:
    """state_dict() names/shapes/dtypes of a module constructed on the meta device (nothing allocated)."""
    with torch.device("meta"):
        module = build()
    return [TensorSpec(name, tuple(t.shape), t.dtype) for name, t in module.state_dict().items()]


def component_specs(component: str, variant: str | ModelFamily, size: str) -> list[TensorSpec]:
    config = model_config(component, variant, size)
    if component == "voice_encoder":
        from .models.voice_encoder import VoiceEncoder

        return _meta_specs(lambda: VoiceEncoder(config))
    if component == "t3":
        from .models.t3 import T3

        return _meta_specs(lambda: T3(config))
    if component == "s3gen":
        from .models.s3gen import S3Gen

        return _meta_specs(lambda: S3Gen(config))
    raise ValueError(component)


def checkpoint_specs(variant: str | ModelFamily, size: str) -> dict[str, list[TensorSpec]]:
    """Every weight file of the checkpoint -> its tensors, in `module.state_dict()` order.

    Files known to omit a tensor (`ABSENT_FROM_FILE`) omit it here too.
    """
    layout = _check_args(variant, size).layout
    specs: dict[str, list[TensorSpec]] = {}
    for component, file in (("voice_encoder", layout.voice_encoder), ("t3", layout.t3), ("s3gen", layout.s3gen)):
        absent = ABSENT_FROM_FILE.get(file, frozenset())
        specs[file] = [s for s in component_specs(component, variant, size) if s.name not in absent]
    return specs


# ------------------------------------------------------------------------------------------------------ values
def tensor_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


def random_tensor(seed: int, spec: TensorSpec) -> torch.Tensor:
    """The value rule (see the reference kit README, "Random weights"), for every tensor except the fixed buffers.

    Scales keep activations finite through deep stacks: matrices ~ N(0, 1/fan_in); biases ~ N(0, 0.02^2);
    other vectors (norm gains, Snake alpha) ~ 1 + N(0, 0.02^2). BatchNorm statistics are the identity.
    """
    shape = spec.shape
    if not spec.dtype.is_floating_point:
        return torch.zeros(shape, dtype=spec.dtype)
    if spec.name.endswith("running_mean"):
        return torch.zeros(shape, dtype=spec.dtype)
    if spec.name.endswith("running_var"):
        return torch.ones(shape, dtype=spec.dtype)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(tensor_seed(seed, spec.name))
    value = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        value.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    elif "bias" in spec.name.rsplit(".", 1)[-1]:
        value.mul_(0.02)
    else:
        value.mul_(0.02).add_(1.0)
    return value.to(spec.dtype)


def fixed_buffer_values(variant: str | ModelFamily, size: str) -> dict[str, torch.Tensor]:
    """`tokenizer._mel_filters` and `tokenizer.window` as S3Gen's tokenizer computes them when constructed.

    Only the tokenizer is built (on the CPU, without encoder blocks): the two buffers depend on its n_fft/n_mels.
    """
    from .models.s3tokenizer import S3TokenizerV2

    tok_config = model_config("s3gen", variant, size).tokenizer
    with torch.device("cpu"):
        tokenizer = S3TokenizerV2(dataclasses.replace(tok_config, n_layer=0))
    return {f"tokenizer.{name}": getattr(tokenizer, name).detach().clone() for name in ("_mel_filters", "window")}


def build_state_dict(
    specs: Iterable[TensorSpec], seed: int, fixed: dict[str, torch.Tensor]
) -> OrderedDict[str, torch.Tensor]:
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for spec in specs:
        if spec.name in fixed:
            value = fixed[spec.name]
            if tuple(value.shape) != spec.shape:
                raise ValueError(f"fixed buffer {spec.name}: shape {tuple(value.shape)}, expected {spec.shape}")
            state[spec.name] = value.to(spec.dtype).clone()
        else:
            state[spec.name] = random_tensor(seed, spec)
    return state


# ------------------------------------------------------------------------------------------------------- conds
def make_conds(seed: int, variant: str | ModelFamily = "english") -> dict[str, dict[str, torch.Tensor | None]]:
    """The built-in voice in `Conditionals.save()` structure: {"t3": T3Cond fields, "gen": S3Gen reference dict}.

    Every field has its own generator so the fields are independent of one another. The prompt lengths are the
    family's (`RandomRecipe`: Turbo's and Nano's are longer); the fields are drawn the same way.
    """
    recipe = families.resolve(variant).random_recipe
    t3_tokens = recipe.conds_t3_prompt_tokens
    gen_tokens = recipe.conds_gen_prompt_tokens
    gen_frames = recipe.conds_gen_prompt_frames

    def gen(field: str) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(tensor_seed(seed, f"conds.pt:{field}"))
        return g

    speaker = torch.randn(1, CONDS_SPEAKER_DIM, generator=gen("t3.speaker_emb"))
    speaker = speaker / torch.linalg.vector_norm(speaker, dim=1, keepdim=True)  # VoiceEncoder output is unit-norm
    t3 = {
        "speaker_emb": speaker,
        "clap_emb": None,
        "cond_prompt_speech_tokens": torch.randint(
            0,
            SPEECH_VOCAB,
            (1, t3_tokens),
            generator=gen("t3.cond_prompt_speech_tokens"),
            dtype=torch.long,
        ),
        "cond_prompt_speech_emb": None,
        "emotion_adv": 0.5 * torch.ones(1, 1, 1),
    }
    # A log-mel-like prompt (values around -6, as quiet speech has) rather than unit noise.
    prompt_feat = torch.randn(1, gen_frames, CONDS_MELS, generator=gen("gen.prompt_feat")) * 2.0 - 6.0
    ref = {
        "prompt_token": torch.randint(
            0, SPEECH_VOCAB, (1, gen_tokens), generator=gen("gen.prompt_token"), dtype=torch.long
        ),
        "prompt_token_len": torch.tensor([gen_tokens], dtype=torch.long),
        "prompt_feat": prompt_feat,
        "prompt_feat_len": None,
        "embedding": torch.randn(1, CONDS_XVECTOR_DIM, generator=gen("gen.embedding")),
    }
    return {"t3": t3, "gen": ref}


# -------------------------------------------------------------------------------------------------- tokenizers
MULTILINGUAL_VOCAB_SIZE = 2454
MULTILINGUAL_LANGUAGES = ("ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh").split()
CANGJIE_CODE_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789."
# Scripts whose every code point is one token of the synthetic multilingual vocabulary (inclusive ranges): Latin-1
# letters, Latin Extended-A, combining marks, Greek, Cyrillic, Hebrew, Arabic (punctuation, letters, digits),
# Devanagari, Hangul Jamo, CJK punctuation, Hiragana, Katakana.
SYNTHETIC_CHAR_RANGES = (
    (0x00C0, 0x00FF), (0x0100, 0x017F), (0x0300, 0x036F), (0x0370, 0x03FF), (0x0400, 0x045F),
    (0x0591, 0x05F4), (0x060C, 0x060C), (0x061B, 0x061B), (0x061F, 0x061F), (0x0621, 0x065F),
    (0x0660, 0x066D), (0x0670, 0x06D3), (0x0900, 0x097F), (0x1100, 0x11FF), (0x3000, 0x303F),
    (0x3040, 0x309F), (0x30A0, 0x30FF),
)  # fmt: skip
# A few glyphs of the Cangjie5 traditional table (Jackchows/Cangjie5, MIT) in its order, as "glyph\tcode": shared
# codes exercise the index-suffix logic, and 气/学 appear twice (the later code wins when the table is read).
SYNTHETIC_CANGJIE = (
    "人\to", "中\tl", "丨\tl", "天\tmk", "不\tmf", "灰\tmf", "今\toin", "你\tonf", "好\tvnd", "仃\tomn",
    "气\tomn", "真\tjbmc", "错\topta", "我\thqi", "们\tolis", "是\tamyo", "国\twmgi", "烰\tfbnd", "学\tfbnd",
    "习\tsim", "语\tivmmr", "言\tymmr", "很\thoav", "高\tyrbr", "兴\tfmc", "认\tivo", "识\tivrc",
    "气\txomn", "学\txfbnd",
)  # fmt: skip


def english_tokenizer() -> dict[str, Any]:
    return json.loads(ENGLISH_TOKENIZER.read_text(encoding="utf-8"))


def synthetic_multilingual_tokenizer() -> dict[str, Any]:
    """Stand-in for `grapheme_mtl_merged_expanded_v1.json` with the published vocabulary size (2454).

    Ids 0..703 are the English tokenizer's (Resemble's older multilingual tokenizer started the same way); then,
    skipping anything already present: [MASK] [PAD] [SEP] [CLS], the language tags, the Cangjie code tokens
    (these as added special tokens), one token per character of `SYNTHETIC_CHAR_RANGES`, and [SYN_nnnn] fillers.
    """
    tokenizer = english_tokenizer()
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    added: list[dict[str, Any]] = tokenizer["added_tokens"]

    def append(token: str, special: bool) -> None:
        if token in vocab:
            return
        token_id = len(vocab)
        vocab[token] = token_id
        if special:
            added.append(
                {"id": token_id, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
            )  # fmt: skip

    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError("English tokenizer ids are not contiguous")
    for token in ("[MASK]", "[PAD]", "[SEP]", "[CLS]"):
        append(token, special=True)
    for language in MULTILINGUAL_LANGUAGES:
        append(f"[{language}]", special=True)
    for code in CANGJIE_CODE_CHARS:
        append(f"[cj_{code}]", special=True)
    for first, last in SYNTHETIC_CHAR_RANGES:
        for code_point in range(first, last + 1):
            append(chr(code_point), special=False)
    filler = 0
    while len(vocab) < MULTILINGUAL_VOCAB_SIZE:
        append(f"[SYN_{filler:04d}]", special=False)
        filler += 1
    if len(vocab) != MULTILINGUAL_VOCAB_SIZE:
        raise ValueError(f"synthetic multilingual vocabulary has {len(vocab)} tokens")
    return tokenizer


def synthetic_cangjie_table() -> list[str]:
    return list(SYNTHETIC_CANGJIE)


def write_tokenizer_files(layout: CheckpointLayout, out: Path) -> None:
    """The text tokenizer files of `layout`'s family, as its `RandomRecipe.tokenizer_writer` writes them."""
    layout.family.random_recipe.write_tokenizer(layout, out)


def write_english_tokenizer(layout: CheckpointLayout, out: Path) -> None:
    """The genuine published English tokenizer."""
    _atomic_copy(ENGLISH_TOKENIZER, out / layout.text_tokenizer)


def write_gpt2_tokenizer(layout: CheckpointLayout, out: Path) -> None:
    """GPT-2's tokenizer files with the paralinguistic tags (Turbo's and Nano's)."""
    for name in (layout.text_tokenizer, *layout.tokenizer_extras, *layout.optional_files):
        _atomic_copy(GPT2_TOKENIZER_DIR / name, out / name)


def write_multilingual_tokenizer(layout: CheckpointLayout, out: Path) -> None:
    """A synthetic grapheme tokenizer of the published size, the Cangjie table and the HF-cache copy of the table
    that the reference resolves."""
    text = json.dumps(synthetic_multilingual_tokenizer(), ensure_ascii=False, indent=2)
    _atomic_write_text(out / layout.text_tokenizer, text)
    assert layout.cangjie_table is not None
    table = json.dumps(synthetic_cangjie_table(), ensure_ascii=False)
    _atomic_write_text(out / layout.cangjie_table, table)
    cache = out / ("models--" + HF_REPO_ID.replace("/", "--"))
    (cache / "refs").mkdir(parents=True, exist_ok=True)
    (cache / "snapshots" / HF_CACHE_REVISION).mkdir(parents=True, exist_ok=True)
    _atomic_write_text(cache / "refs" / "main", HF_CACHE_REVISION)
    _atomic_write_text(cache / "snapshots" / HF_CACHE_REVISION / layout.cangjie_table, table)


# ------------------------------------------------------------------------------------------------------ writing
PARTIAL_DIR = ".partial"


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[Path]:
    """A temporary path to write `path` to, renamed into place when the block ends: an interrupted run never leaves
    a plausible-looking file. It sits in PARTIAL_DIR beside `path` under the same base name (torch.save derives
    the archive's record names from it).

    The file ends with the permissions a new file gets in that directory, read back from an empty one created
    there first: some writers (safetensors) create theirs 0600."""
    tmp = path.parent / PARTIAL_DIR / path.name
    tmp.parent.mkdir(exist_ok=True)
    tmp.unlink(missing_ok=True)
    tmp.touch()  # the usual mode: 0o666 less the process's umask, applied by the OS
    mode = stat.S_IMODE(tmp.stat().st_mode)
    yield tmp
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # other files of the run may still be in it
        tmp.parent.rmdir()


def _atomic_write_text(path: Path, text: str) -> None:
    with _writing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _atomic_copy(src: Path, dst: Path) -> None:
    with _writing(dst) as tmp:
        shutil.copyfile(src, tmp)


def _save_weights(state: OrderedDict[str, torch.Tensor], path: Path) -> None:
    """`.safetensors` without metadata (like the published files) or a torch pickle of the ordered state dict.

    Written under a temporary name and renamed, so an interrupted run never leaves a plausible-looking file.
    """
    with _writing(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(dict(state), str(tmp))
        else:
            torch.save(state, str(tmp))


def write_random_checkpoint(
    variant: str | ModelFamily,
    size: str,
    seed: int,
    out: Path | str,
    weights: Collection[str] | None = None,
    *,
    speaking_pace: bool = True,
) -> Path:
    """Write a complete random checkpoint directory for `variant` (a registered family's name, or the family) and `size`
    ("full"/"tiny") and return it. Deterministic in `seed`; files are generated one at a time, so peak memory is
    about the largest file (T3, 2.1 GB at full size).

    `weights` names the weight files to write (default: all). Every tensor is seeded by its own name, so a file
    written alone is byte-identical to the same file of a complete run; that lets a disk-short machine hold only
    the files it needs. The small files (conds, tokenizers) are always written.

    `speaking_pace` (tiny only): record `SPEECH_TOKENS_PER_TEXT_TOKEN`, so that pieces end about when their text
    would; without it they run to max_new_tokens (tests that count on that length turn it off)."""
    family = _check_args(variant, size)
    variant = family.name
    started = time.perf_counter()
    layout = family.layout
    all_specs = checkpoint_specs(family, size)  # fails before anything is written if a model is unavailable
    if weights is not None:
        unknown = set(weights) - set(all_specs)
        if unknown:
            raise ValueError(f"not weight files of {variant}: {sorted(unknown)} (expected some of {sorted(all_specs)})")
        all_specs = {file: specs for file, specs in all_specs.items() if file in weights}
    fixed = fixed_buffer_values(family, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # leftovers of an interrupted run
    for file, specs in all_specs.items():
        t0 = time.perf_counter()
        state = build_state_dict(specs, seed, fixed)
        _save_weights(state, out / file)
        logger.info("wrote %s: %d tensors in %.1f s", out / file, len(state), time.perf_counter() - t0)
        del state
    with _writing(out / layout.conds) as tmp:
        torch.save(make_conds(seed, family), str(tmp))
    write_tokenizer_files(layout, out)
    config_path = out / CONFIG_FILE
    if size == "tiny":
        configs = model_configs(family, size)
        record = {"format": CONFIG_FORMAT, "variant": variant, "size": size, "seed": seed}
        record.update({key: dataclasses.asdict(cfg) for key, cfg in configs.items()})
        if speaking_pace:
            record["speech_tokens_per_text_token"] = family.random_recipe.speech_tokens_per_text_token
        _atomic_write_text(config_path, json.dumps(record, indent=2) + "\n")
    elif config_path.exists():
        config_path.unlink()  # a full-size checkpoint is described by the published defaults
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    logger.info("random %s/%s checkpoint (seed %d) in %s: %.1f s", variant, size, seed, out,
                time.perf_counter() - started)  # fmt: skip
    return out


def ensure_random_tiny(variant: str | ModelFamily, directory: Path) -> Path:
    """The `random-tiny` checkpoint of `variant` (seed 0, with a speaking pace) in `directory`: written on first
    use, then reused. Returns `directory`."""
    family = families.resolve(variant)
    variant, layout = family.name, family.layout
    if not all((directory / name).is_file() for name in layout.files):
        logger.info("writing a random-weight %s checkpoint to %s (its audio is noise)", variant, directory)
        write_random_checkpoint(variant, "tiny", 0, directory)
    elif load_model_config(directory, layout).speech_tokens_per_text_token is None:
        # written before random checkpoints recorded a speaking pace: the small files again, with it
        write_random_checkpoint(variant, "tiny", 0, directory, weights=())
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a deterministic random-weight Chatterbox checkpoint.")
    parser.add_argument("--variant", choices=sorted(families.names()), required=True)
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_random_checkpoint(args.variant, args.size, args.seed, args.out)


if __name__ == "__main__":
    main()
