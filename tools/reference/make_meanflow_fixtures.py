"""Golden fixtures for the mean-flow S3Gen (Turbo, Nano: `s3gen_meanflow.safetensors`) from chatterbox-tts 0.1.7.

Runs in the oracle venv (the product package is not installed there and is not imported):

    HF_HUB_OFFLINE=1 /work/oracle/venv/bin/python tools/reference/make_meanflow_fixtures.py \
        --out tests/fixtures/golden/meanflow

Writes into --out:
  s3gen_meanflow.safetensors.json  every tensor of the reference's `S3Gen(meanflow=True).state_dict()` in order
                                   ({name, shape, dtype}); `ChatterboxTurboTTS.from_local` loads the published file
                                   strictly, so the file holds exactly these (the script checks the strictness in
                                   the reference's source).
  meanflow.safetensors / .json     inputs, captured estimator steps, mel and waveform of the reference's
                                   `flow_inference` and `inference` (2 steps) after `torch.manual_seed(SEED)`.

Weights: the full-size model, no weight file stored. `flow.*` and `mel2wav.*` (all that inference from a ref dict
uses) get the value rule of our random checkpoints (`chatterbox_vllm.random_checkpoint.random_tensor`,
reimplemented below: a tensor is a pure function of (seed, name)), so the test regenerates the same weights.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import warnings
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from chatterbox import tts_turbo  # noqa: E402
from chatterbox.models.s3gen import S3Gen  # noqa: E402
from chatterbox.models.s3gen.const import S3GEN_SIL  # noqa: E402

WEIGHT_SEED = 0
WEIGHT_PREFIXES = ("flow.", "mel2wav.")
TORCH_SEED = 1234  # torch.manual_seed before flow_inference and before inference
INPUT_SEED = 97  # generator of the speech tokens and the ref dict
PROMPT_TOKENS = 40
PROMPT_FRAMES = 2 * PROMPT_TOKENS + 1  # F = 2T + 1, as embed_ref gives for most clips (and the built-in voices)
SPEECH_TOKENS = 27  # then 3 x S3GEN_SIL, as ChatterboxTurboTTS.generate appends
N_STEPS = 2


# ---------------------------------------------------------------------------------------------- value rule
def tensor_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode("utf-8"))


def random_tensor(seed: int, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Our checkpoints' rule: matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), other vectors ~ 1 + N(0, 0.02^2),
    BatchNorm statistics the identity, integer tensors zero."""
    if not dtype.is_floating_point or name.endswith("running_mean"):
        return torch.zeros(shape, dtype=dtype)
    if name.endswith("running_var"):
        return torch.ones(shape, dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(tensor_seed(seed, name))
    value = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        value.mul_(1.0 / math.sqrt(math.prod(shape[1:])))
    elif "bias" in name.rsplit(".", 1)[-1]:
        value.mul_(0.02)
    else:
        value.mul_(0.02).add_(1.0)
    return value.to(dtype)


def seeded_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: random_tensor(WEIGHT_SEED, name, tuple(t.shape), t.dtype)
        for name, t in model.state_dict().items()
        if name.startswith(WEIGHT_PREFIXES)
    }


# ---------------------------------------------------------------------------------------------- manifest
def loader_is_strict() -> bool:
    """Whether `ChatterboxTurboTTS.from_local` loads s3gen_meanflow.safetensors with strict=True (read from source)."""
    src = inspect.getsource(tts_turbo.ChatterboxTurboTTS.from_local)
    match = re.search(r"s3gen\.load_state_dict\((.*?)\)\n", src, re.S)
    if match is None or "s3gen_meanflow.safetensors" not in src:
        raise RuntimeError("cannot find the mean-flow S3Gen load in ChatterboxTurboTTS.from_local")
    return re.search(r"strict\s*=\s*True", match.group(1)) is not None


def write_manifest(path: Path, state: dict[str, torch.Tensor]) -> None:
    lines = [
        json.dumps({"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")})
        for k, v in state.items()
    ]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n")


# ---------------------------------------------------------------------------------------------- inputs
def fixed_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    g = torch.Generator().manual_seed(INPUT_SEED)
    speech = torch.randint(0, 6561, (SPEECH_TOKENS,), generator=g, dtype=torch.long)
    tokens = torch.cat([speech, torch.full((3,), S3GEN_SIL, dtype=torch.long)])[None]
    ref = {
        "prompt_token": torch.randint(0, 6561, (1, PROMPT_TOKENS), generator=g, dtype=torch.long),
        "prompt_token_len": torch.tensor([PROMPT_TOKENS]),
        "prompt_feat": torch.randn(1, PROMPT_FRAMES, 80, generator=g) * 2.0 - 6.0,
        "prompt_feat_len": None,
        "embedding": torch.randn(1, 192, generator=g),
    }
    return tokens, ref


def ref_copy(ref: dict) -> dict:
    """The reference casts the ref dict in place (tokens become float): hand it a copy each time."""
    return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in ref.items()}


# ---------------------------------------------------------------------------------------------- run
def run_reference(model: S3Gen, tokens: torch.Tensor, ref: dict) -> dict[str, torch.Tensor]:
    steps: list[dict[str, torch.Tensor]] = []
    estimator = model.flow.decoder.estimator
    original = estimator.forward

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        steps.append({**{k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)}, "x": args[0].clone(),
                      "out": out.clone()})  # fmt: skip
        return out

    estimator.forward = recording
    try:
        torch.manual_seed(TORCH_SEED)
        mel = model.flow_inference(tokens, ref_dict=ref_copy(ref), n_cfm_timesteps=N_STEPS, finalize=True)
        flow_steps = list(steps)
        steps.clear()
        torch.manual_seed(TORCH_SEED)
        wav, _ = model.inference(speech_tokens=tokens, ref_dict=ref_copy(ref), n_cfm_timesteps=N_STEPS)
    finally:
        del estimator.forward
    if len(flow_steps) != N_STEPS or len(steps) != N_STEPS:
        raise RuntimeError(f"expected {N_STEPS} estimator calls, got {len(flow_steps)} and {len(steps)}")
    if not torch.equal(steps[0]["x"], flow_steps[0]["x"]):
        raise RuntimeError("inference and flow_inference drew different noise under the same seed")
    tensors = {
        "speech_tokens": tokens,
        "ref_prompt_token": ref["prompt_token"], "ref_prompt_token_len": ref["prompt_token_len"],
        "ref_prompt_feat": ref["prompt_feat"], "ref_embedding": ref["embedding"],
        "cfm_noise_z": flow_steps[0]["x"],
        "mel": mel,
        "wav": wav,
    }  # fmt: skip
    for k, step in enumerate(flow_steps):
        names = ("x", "mask", "mu", "t", "r", "spks", "cond") if k == 0 else ("x", "t", "r")
        tensors.update({f"est_step{k}_in_{n}": step[n] for n in names})
        tensors[f"est_step{k}_out"] = step["out"]
    return tensors


def write_fixture(out: Path, stage: str, tensors: dict[str, torch.Tensor], notes: dict) -> None:
    plain = {k: v.detach().clone().contiguous().cpu() for k, v in tensors.items()}
    save_file(plain, str(out / f"{stage}.safetensors"))
    index = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in plain.items()}
    with open(out / f"{stage}.json", "w", encoding="utf-8") as f:
        json.dump({**notes, "tensors": index}, f, ensure_ascii=False, indent=1)
    print(f"wrote {stage}.safetensors ({(out / f'{stage}.safetensors').stat().st_size} bytes)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    torch.manual_seed(0)
    model = S3Gen(meanflow=True)
    strict = loader_is_strict()
    write_manifest(args.out / "s3gen_meanflow.safetensors.json", model.state_dict())
    print(f"manifest: {len(model.state_dict())} tensors; from_local strict={strict}", flush=True)

    missing, unexpected = model.load_state_dict(seeded_weights(model), strict=False)
    if unexpected or any(k.startswith(WEIGHT_PREFIXES) for k in missing):
        raise RuntimeError(f"weights do not fit: {unexpected} {missing}")
    model.eval()
    tokens, ref = fixed_inputs()
    tensors = run_reference(model, tokens, ref)
    notes = {
        "reference": "chatterbox-tts 0.1.7, S3Gen(meanflow=True) (S3Token2Wav), CPU float32",
        "s3gen_meanflow_loader_strict": strict,
        "weights": f"flow.* and mel2wav.*: random_tensor({WEIGHT_SEED}, name) (our checkpoints' value rule); "
                   "other tensors unused by inference from a ref dict",
        "inputs": f"torch.Generator().manual_seed({INPUT_SEED}): randint(0,6561,({SPEECH_TOKENS},)) speech tokens "
                  f"+ 3 x S3GEN_SIL ({S3GEN_SIL}); prompt_token randint (1,{PROMPT_TOKENS}); prompt_feat "
                  f"randn(1,{PROMPT_FRAMES},80)*2-6; embedding randn(1,192)",
        "torch_manual_seed": TORCH_SEED,
        "n_cfm_timesteps": N_STEPS,
        "random_draw_order": [
            "flow_inference: noise = torch.randn(1, 80, 2 * n_tokens)",
            "CFM: z = torch.randn_like(mu); z[..., mu_frames - 2 * n_tokens:] = noise",
            "then HiFT's draws as in the original S3Gen (SineGen phase, SineGen noise, unused source noise)",
        ],
        "solver": "basic_euler: t_span = linspace(0, 1, 3) (no cosine); for (t, r): x += (r - t) * est(x, mask, mu, "
                  "t, spks, cond, r); no CFG",
        "cfm_noise_z": "the estimator's x at step 0 (the composed z)",
    }  # fmt: skip
    write_fixture(args.out, "meanflow", tensors, notes)


if __name__ == "__main__":
    main()
