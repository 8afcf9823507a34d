"""Golden fixtures for GPT-2 T3 (Turbo, Nano) from the reference, chatterbox-tts 0.1.7 (run in the oracle venv).

0.1.7 builds Turbo's T3 as `T3(hp)` with `hp.llama_config_name = "GPT2_medium"` (`tts_turbo.py`); upstream builds
Nano the same way with "GPT2_small" (resemble-ai/chatterbox 5de7a54). The arithmetic does not depend on the width,
so the fixture runs the reference's own T3 class on a tiny GPT-2 config registered beside those two (`GPT2_tiny`:
2 layers x 64, 2 heads) with our seed-0 tiny weights, and the full-size manifests of both files check names and
shapes. Writes into --out:

* `t3_turbo_v1.safetensors.json`, `t3_nano_v1.safetensors.json`: every tensor {name, shape, dtype} of the full-size
  modules, in state_dict() order (the files are loaded strictly);
* `t3_gpt2_tiny.safetensors` / `.json`: inputs (voice, text ids with tags, teacher-forced speech tokens), the
  conditioning prefix, the prefill embeddings, speech logits at the prefill's last position and after each forced
  token, Turbo's sampling distribution at two steps, and the tokens `inference_turbo` picks with top_k=1.

    # product venv: the tiny weights (a pure function of seed and tensor name)
    .venv/bin/python -c "from safetensors.torch import save_file; from chatterbox_vllm.random_checkpoint \
      import component_specs, build_state_dict as b; save_file(dict(b(component_specs('t3','turbo','tiny'),0,{})), \
      '/tmp/t3_turbo_tiny_seed0.safetensors')"
    HF_HUB_OFFLINE=1 /work/oracle/venv/bin/python tools/reference/make_gpt2_t3_fixtures.py \
      --weights /tmp/t3_turbo_tiny_seed0.safetensors --out tests/fixtures/golden/turbo
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chatterbox.models.t3 import T3  # noqa: E402
from chatterbox.models.t3 import llama_configs  # noqa: E402
from chatterbox.models.t3.modules.cond_enc import T3Cond  # noqa: E402
from chatterbox.models.t3.modules.t3_config import T3Config  # noqa: E402

GPT2_SMALL = {  # upstream's GPT2_small (5de7a54), which 0.1.7 lacks: GPT2_medium at 12 x 768
    **llama_configs.GPT2_MEDIUM_CONFIG, "n_embd": 768, "hidden_size": 768, "n_head": 12, "n_layer": 12,
}  # fmt: skip
GPT2_TINY = {**llama_configs.GPT2_MEDIUM_CONFIG, "n_embd": 64, "hidden_size": 64, "n_head": 2, "n_layer": 2}


def turbo_hp(config_name: str) -> T3Config:
    """`tts_turbo.py`'s hyperparameters."""
    hp = T3Config(text_tokens_dict_size=50276)
    hp.llama_config_name = config_name
    hp.speech_tokens_dict_size = 6563
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


def manifest(module: torch.nn.Module) -> list[dict]:
    return [{"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in module.state_dict().items()]  # fmt: skip


def processors(temperature: float, top_k: int, top_p: float, penalty: float) -> LogitsProcessorList:
    """`inference_turbo`'s chain, built the way it builds it."""
    chain = LogitsProcessorList()
    if temperature > 0 and temperature != 1.0:
        chain.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    if penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(penalty))
    return chain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="our seed-0 tiny GPT-2 T3 (t3_turbo_v1 layout)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    llama_configs.LLAMA_CONFIGS["GPT2_small"] = GPT2_SMALL
    llama_configs.LLAMA_CONFIGS["GPT2_tiny"] = GPT2_TINY

    for file, name in (("t3_turbo_v1.safetensors", "GPT2_medium"), ("t3_nano_v1.safetensors", "GPT2_small")):
        with torch.device("meta"):
            module = T3(turbo_hp(name))
        (args.out / f"{file}.json").write_text(json.dumps(manifest(module)) + "\n")
        print(f"{file}: {len(module.state_dict())} tensors", flush=True)

    model = T3(turbo_hp("GPT2_tiny"))
    model.load_state_dict(load_file(str(args.weights)))  # strict, as from_local loads
    del model.tfmr.wte  # as from_local does
    model.eval()

    g = torch.Generator().manual_seed(1234)
    speaker = F.normalize(torch.randn(1, 256, generator=g), dim=-1)
    prompt = torch.randint(0, 6561, (1, 375), generator=g)
    # GPT-2 ids, two of them paralinguistic tags (50257.. are the 19 added tokens).
    text = torch.tensor([[464, 2068, 7586, 21831, 50257, 18045, 625, 262, 16931, 3290, 50262, 13]])
    forced = torch.randint(0, 6561, (1, 6), generator=g)
    cond = T3Cond(speaker_emb=speaker, cond_prompt_speech_tokens=prompt, emotion_adv=0.0 * torch.ones(1, 1, 1))

    out: dict[str, torch.Tensor] = {"speaker_emb": speaker, "cond_prompt_speech_tokens": prompt,
                                    "text_tokens": text, "speech_tokens": forced}  # fmt: skip
    with torch.inference_mode():
        start = model.hp.start_speech_token * torch.ones_like(text[:, :1])
        cond_emb = model.prepare_conditioning(copy.deepcopy(cond))
        embeds, _ = model.prepare_input_embeds(
            t3_cond=copy.deepcopy(cond), text_tokens=text, speech_tokens=start, cfg_weight=0.0
        )
        full = torch.cat([embeds, model.speech_emb(forced)], dim=1)
        hidden = model.tfmr(inputs_embeds=full).last_hidden_state
        logits = model.speech_head(hidden[:, embeds.shape[1] - 1 :])  # [1, 1 + forced, vocab]
        out.update(cond_emb=cond_emb, prefill_embeds=embeds, logits=logits)

        chain = processors(0.8, 1000, 0.95, 1.2)
        out["probs_step0"] = F.softmax(chain(start, logits[:, 0].clone()), dim=-1)  # history: the start token
        out["probs_step3"] = F.softmax(chain(forced[:, :3], logits[:, 3].clone()), dim=-1)  # after 3 tokens

        tokens = model.inference_turbo(copy.deepcopy(cond), text, temperature=0.8, top_k=1, top_p=0.95,
                                       repetition_penalty=1.2, max_gen_len=24)  # fmt: skip
        out["top1_tokens"] = tokens[0].to(torch.long)

    save_file({k: v.contiguous() for k, v in out.items()}, str(args.out / "t3_gpt2_tiny.safetensors"))
    meta = {
        "reference": "chatterbox-tts 0.1.7 T3 (inference_turbo), GPT2_tiny = GPT2_medium at 2 layers x 64, 2 heads",
        "weights": "chatterbox-vllm random_checkpoint, variant turbo, size tiny, seed 0",
        "sampling": {"temperature": 0.8, "top_k": 1000, "top_p": 0.95, "repetition_penalty": 1.2},
        "top1": {"top_k": 1, "max_gen_len": 24},
    }
    (args.out / "t3_gpt2_tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", args.out, {k: list(v.shape) for k, v in out.items()}, flush=True)


if __name__ == "__main__":
    main()
