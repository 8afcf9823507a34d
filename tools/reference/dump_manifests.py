#!/usr/bin/env python3
"""Record what the reference (chatterbox-tts 0.1.7) expects in each published checkpoint file.

Runs in the oracle venv (tools/reference/setup_oracle.sh), never in the product or CI:

    HF_HUB_OFFLINE=1 /work/oracle/venv/bin/python tools/reference/dump_manifests.py \
        [--out tools/reference/manifests] [--checkpoints DIR]

Writes into --out:
  <file>.json                       every tensor {name, shape, dtype} of the file, in module.state_dict() order
  <file>.metadata.json              (.pt files) the per-module `_metadata` that torch.save(state_dict()) pickles
  loaders.json                      per file: the loader function, strictness and absent tensors, read from the
                                    reference's own from_local() source and confirmed by loading
  conds.pt.json                     structure of conds.pt (observed from the reference's prepare_conditionals)
  non_persistent_buffers.json       buffers the modules have but no file holds
  s3gen_fixed_buffers.safetensors   the constructor values of the two non-learned S3Gen buffers
  checksums_seed0.json              (with --checkpoints) sha256 of every tensor of the seed-0 random checkpoints
                                    made by our generator, read through the reference loaders

Modules are built exactly as from_local() builds them (CPU, default init); no weights are needed.
"""

from __future__ import annotations

import argparse
import ast
import gc
import hashlib
import inspect
import json
import os
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from chatterbox.models.s3gen import S3Gen  # noqa: E402
from chatterbox.models.t3 import T3  # noqa: E402
from chatterbox.models.t3.modules.t3_config import T3Config  # noqa: E402
from chatterbox.models.voice_encoder import VoiceEncoder  # noqa: E402
from chatterbox.mtl_tts import ChatterboxMultilingualTTS  # noqa: E402
from chatterbox.tts import ChatterboxTTS  # noqa: E402

HERE = Path(__file__).resolve().parent

# file -> (variant, component) as the two from_local() functions use them
FILES = {
    "ve.safetensors": ("english", "ve"),
    "t3_cfg.safetensors": ("english", "t3_en"),
    "s3gen.safetensors": ("english", "s3gen"),
    "ve.pt": ("multilingual", "ve"),
    "t3_mtl23ls_v2.safetensors": ("multilingual", "t3_mtl"),
    "s3gen.pt": ("multilingual", "s3gen"),
}
BUILDERS = {
    "ve": VoiceEncoder,
    "t3_en": lambda: T3(T3Config.english_only()),
    "t3_mtl": lambda: T3(T3Config.multilingual()),
    "s3gen": S3Gen,
}
FIXED_BUFFERS = ("tokenizer._mel_filters", "tokenizer.window")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_manifest(path: Path, state: dict[str, torch.Tensor]) -> None:
    lines = [json.dumps({"name": k, "shape": list(v.shape), "dtype": dtype_name(v.dtype)}) for k, v in state.items()]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")


# ------------------------------------------------------------------------------------------ loaders from source
def loaders_from_source(cls: type) -> dict[str, dict]:
    """Parse `cls.from_local`: for every `<module>.load_state_dict(...)` call, which file feeds it, read by which
    function, and with which `strict`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.from_local)))
    # variable -> (file name, reading call) for assignments such as `t3_state = load_file(ckpt_dir / "x")`
    reads: dict[str, tuple[str, str]] = {}

    def file_read(node: ast.AST) -> tuple[str, str] | None:
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                names = [c.value for c in ast.walk(call) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                files = [n for n in names if n.endswith((".pt", ".safetensors"))]
                if files:
                    return files[0], ast.unparse(call)
            if isinstance(call, ast.Name) and call.id in reads:
                return reads[call.id]
        return None

    out: dict[str, dict] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found = file_read(node.value)
            if found and node.targets[0].id not in reads:
                reads[node.targets[0].id] = found
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_state_dict":
            found = file_read(node.args[0]) if node.args else None
            if not found:
                continue
            strict = True
            for kw in node.keywords:
                if kw.arg == "strict":
                    strict = bool(ast.literal_eval(kw.value))
            out[found[0]] = {"read_with": found[1], "call": ast.unparse(node), "strict": strict}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "manifests")
    ap.add_argument("--checkpoints", type=Path, help="dir with english-full-seed0/ and multilingual-full-seed0/")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    sources = {"english": loaders_from_source(ChatterboxTTS), "multilingual": loaders_from_source(ChatterboxMultilingualTTS)}
    states: dict[str, dict[str, torch.Tensor]] = {}
    non_persistent: dict[str, list] = {}
    loaders: dict[str, dict] = {}
    for component, build in BUILDERS.items():  # one module at a time (T3 is 2 GB)
        module = build()
        state = module.state_dict()
        persistent = set(state)
        non_persistent[component] = [[n, list(b.shape)] for n, b in module.named_buffers() if n not in persistent]
        for file, (variant, comp) in FILES.items():
            if comp != component:
                continue
            info = dict(sources[variant][file], variant=variant, module=type(module).__name__)
            file_state = state
            if not info["strict"]:
                # A non-strict load is there because the published file lacks tensors: the ones it lacks are the
                # constructed values the module keeps. For s3gen.safetensors that is tokenizer.window (the
                # published size matches the state dict without it, see the reference kit).
                absent = ["tokenizer.window"] if component == "s3gen" else []
                file_state = {k: v for k, v in state.items() if k not in absent}
                check = module.load_state_dict({k: v.clone() for k, v in file_state.items()}, strict=False)
                assert list(check.missing_keys) == absent and not check.unexpected_keys, check
                info["absent_from_file"] = absent
                info["why_not_strict"] = (
                    "the published file omits tokenizer.window (S3Tokenizer's Hann window buffer, constructor "
                    "value torch.hann_window(400)); strict=False keeps the constructed one. _mel_filters IS in the file."
                )
            else:
                info["absent_from_file"] = []
            info["tensors"] = len(file_state)
            info["data_bytes"] = sum(v.numel() * v.element_size() for v in file_state.values())
            loaders[file] = info
            write_manifest(args.out / f"{file}.json", file_state)
            if file.endswith(".pt"):
                meta = {k: dict(v) for k, v in state._metadata.items()}
                (args.out / f"{file}.metadata.json").write_text(json.dumps(meta))
            print(f"{file}: {len(file_state)} tensors, strict={info['strict']}", flush=True)
        if component == "s3gen":
            save_file({k: state[k].clone().contiguous() for k in FIXED_BUFFERS},
                      str(args.out / "s3gen_fixed_buffers.safetensors"))  # fmt: skip
            states["s3gen"] = module
        else:
            del module
        del state
        gc.collect()
    (args.out / "loaders.json").write_text(json.dumps(loaders, indent=1) + "\n")
    (args.out / "non_persistent_buffers.json").write_text(json.dumps(
        {"ve": non_persistent["ve"], "t3_en": non_persistent["t3_en"], "t3_mtl": non_persistent["t3_mtl"],
         "s3gen": non_persistent["s3gen"]}, indent=1))  # fmt: skip
    dump_conds_structure(args.out, states.pop("s3gen"))
    if args.checkpoints:
        dump_checksums(args.out, args.checkpoints)


# ---------------------------------------------------------------------------------------------- conds.pt structure
def dump_conds_structure(out: Path, s3gen: torch.nn.Module) -> None:
    """Observe the structure of `Conditionals` as the reference builds and saves it (12 s synthetic reference)."""
    import soundfile as sf

    from chatterbox.models.t3.modules.cond_enc import T3Cond

    ve = VoiceEncoder().eval()
    # prepare_conditionals() reads only T3's config (the prompt length), so a full T3 need not be built here.
    t3_stub = SimpleNamespace(hp=T3Config.english_only())
    model = ChatterboxTTS(t3_stub, s3gen.eval(), ve, tokenizer=None, device="cpu")
    sr = 24000
    t = np.arange(12 * sr) / sr
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ref.wav"
        sf.write(path, wav, sr, subtype="FLOAT")
        model.prepare_conditionals(str(path), exaggeration=0.5)
        model.conds.save(Path(tmp) / "conds.pt")
        saved = torch.load(Path(tmp) / "conds.pt", weights_only=True)

    def describe(d: dict) -> list[dict]:
        rows = []
        for k, v in d.items():
            rows.append({"name": k, "value": None} if v is None else
                        {"name": k, "shape": list(v.shape), "dtype": dtype_name(v.dtype)})  # fmt: skip
        return rows

    gen = describe(saved["gen"])
    tokens = saved["gen"]["prompt_token"].shape[1]
    frames = saved["gen"]["prompt_feat"].shape[1]
    # the prompt lengths depend on the reference clip: name them T (tokens) and F (mel frames)
    for row in gen:
        if "shape" in row and row["name"] in ("prompt_token", "prompt_feat"):
            row["shape"][1] = "T" if row["name"] == "prompt_token" else "F"
    info = {
        "file": "conds.pt (same structure in the English and the multilingual checkpoint)",
        "format": "torch.save({'t3': T3Cond.__dict__, 'gen': S3Gen.embed_ref(...) dict}) by Conditionals.save(); "
                  "loaded with torch.load(weights_only=True) by Conditionals.load()",
        "t3_fields": [f for f in T3Cond.__dataclass_fields__],
        "t3": describe(saved["t3"]),
        "gen": gen,
        "observed_with": f"prepare_conditionals() on a 12 s reference: {tokens} S3Gen prompt tokens (first 10 s), "
                         f"{frames} prompt mel frames (F = 2T or 2T+1: embed_ref keeps mel_len//2 tokens); "
                         "the T3 prompt is the first 6 s (150 tokens)",
        "random_checkpoint": "our generator writes T=156 prompt tokens and F=313 frames (the reference kit's "
                             "estimate from the published file size), each field from its own seeded generator",
    }
    (out / "conds.pt.json").write_text(json.dumps(info, indent=1) + "\n")
    print("conds.pt.json:", [r["name"] for r in info["t3"]], [r["name"] for r in gen], flush=True)


# ---------------------------------------------------------------------------------------------------- checksums
def dump_checksums(out: Path, root: Path) -> None:
    """sha256 of every tensor as the reference loaders read the seed-0 files (raw little-endian C-order bytes)."""
    sums: dict[str, dict] = {}
    for variant in ("english", "multilingual"):
        ckpt = root / f"{variant}-full-seed0"
        sums[variant] = {}
        for file, (v, _) in FILES.items():
            if v != variant:
                continue
            path = ckpt / file
            state = load_file(str(path)) if file.endswith(".safetensors") else torch.load(path, weights_only=True)
            sums[variant][file] = {
                k: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for k, t in sorted(state.items())
            }
            del state
            gc.collect()
    sums["rule"] = ("sha256 of each tensor's raw little-endian bytes (C order), read with the reference's loader "
                    "from the seed-0 full-size checkpoint written by chatterbox_vllm.random_checkpoint")  # fmt: skip
    (out / "checksums_seed0.json").write_text(json.dumps(sums, indent=0, sort_keys=True))
    print("checksums_seed0.json written", flush=True)


if __name__ == "__main__":
    sys.exit(main())
