"""T3 on the GPU: greedy parity of the vLLM engine with the PyTorch engine at full size, and decode throughput.

Writes a full-size random T3 (seed-deterministic, the real tensor names and shapes) and a built-in voice into
--work, then:
1. parity: greedy tokens of both engines in float32 for a few texts, CFG on and off;
2. throughput: the vLLM engine (bfloat16 by default, CUDA graphs) decoding for 1, 8, 32 ... concurrent requests;
   the PyTorch engine's single stream for comparison.
Prints and writes a JSON report. Usage:
    python -m benchmarks.t3_vllm --work /tmp/t3 --out report.json [--dtype bfloat16] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from benchmarks.t3_args import add_t3_engine_args, engine_options

from chatterbox_vllm import random_checkpoint as rw
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.sampling import apply_cfg, apply_repetition_penalty
from chatterbox_vllm.engine.factory import prefix_only
from chatterbox_vllm.engine.torch_engine import TorchT3Engine
from chatterbox_vllm.engine.vllm_engine import VLLMOptions, VLLMT3Engine
from chatterbox_vllm.models.t3 import T3Cond, T3Config, load_t3


def write_t3(work: Path, variant: str, seed: int, size: str = "full") -> tuple[Path, T3Config]:
    """A random T3 weight file ("full" or "tiny": the CPU smoke size) and its config."""
    config = T3Config.tiny(variant) if size == "tiny" else T3Config.for_variant(variant)
    name = f"t3-{variant}-seed{seed}" if size == "full" else f"t3-{variant}-{size}-seed{seed}"
    path = work / f"{name}.safetensors"
    if not path.exists():
        state = rw.build_state_dict(rw.component_specs("t3", variant, size), seed, {})
        save_file(dict(state), str(path))
    return path, config


def voice(seed: int) -> T3Cond:
    fields = rw.make_conds(seed)["t3"]
    return T3Cond(
        speaker_emb=fields["speaker_emb"],
        cond_prompt_speech_tokens=fields["cond_prompt_speech_tokens"],
        emotion_adv=fields["emotion_adv"],
    )


def texts(config: T3Config, count: int, length: int) -> list[torch.Tensor]:
    """Random text ids (a sentence is ~40-80 tokens) framed by T3's start/stop tokens."""
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(count):
        body = torch.randint(1, config.text_tokens_dict_size, (length + 7 * (i % 5),), generator=g)
        body[body == config.start_text_token] = 2
        out.append(torch.cat((torch.tensor([config.start_text_token]), body, torch.tensor([config.stop_text_token]))))
    return out


@torch.inference_mode()
def reference_logits_at(model, text: torch.Tensor, cond: T3Cond, tokens: list[int], step: int, params) -> torch.Tensor:
    """The PyTorch engine's processed logits (CFG + repetition penalty) at `step`, teacher-forced on `tokens`."""
    cfg = model.config
    rows = 2 if params.uses_cfg else 1
    prefix = model.prefill_embeds(cond.to(model.device), text.to(model.device), cfg=params.uses_cfg)
    cache = model.new_kv_cache(rows, prefix.shape[1] + step + 1)
    hidden = model(prefix, cache)[:, -1:]
    for i in range(step):
        token = torch.tensor([[tokens[i]]], device=model.device)
        hidden = model(model.speech_embeds(token, i + 1).expand(rows, -1, -1), cache)
    logits = model.speech_logits(hidden[:, -1])
    if params.uses_cfg:
        logits = apply_cfg(logits[0:1], logits[1:2], params.cfg_weight)
    history = torch.tensor([cfg.start_speech_token, *tokens[:step]], device=model.device)
    return apply_repetition_penalty(logits, history, params.repetition_penalty)[0]


def parity(weights: Path, config: T3Config, cond: T3Cond, tokens: int, gib: float) -> dict:
    reference = TorchT3Engine(load_t3(weights, config).eval().to("cuda"))
    total = torch.cuda.get_device_properties(0).total_memory
    options = VLLMOptions(max_model_len=1024, max_num_seqs=8, dtype="float32", gpu_memory_utilization=gib * 2**30 / total)
    engine = VLLMT3Engine(prefix_only(load_t3(weights, config).eval()).to("cuda"), weights, options)
    cases = []
    try:
        for i, text in enumerate(texts(config, 3, 40)):
            for w in (0.5, 0.0):
                params = SamplingParams(temperature=0.0, cfg_weight=w, max_new_tokens=tokens)
                a = reference.generate(text, cond, params)
                b = engine.generate(text, cond, params)
                first_diff = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
                case = {"text": i, "cfg_weight": w, "tokens": len(a), "equal": a == b, "first_diff": first_diff}
                if first_diff is not None:
                    # How close was the reference's own choice? A gap at float32 noise level is a near-tie.
                    logits = reference_logits_at(reference.model, text, cond, a, first_diff, params)
                    top2 = torch.topk(logits, 2).values
                    case["reference_top2_gap"] = float(top2[0] - top2[1])
                    case["vllm_token_deficit"] = float(logits[a[first_diff]] - logits[b[first_diff]])
                    case["logit_scale"] = float(logits.std())
                cases.append(case)
    finally:
        engine.shutdown()
    # The PyTorch engine's own speed, for comparison (float32, one stream, CFG as a batch of two).
    text = texts(config, 1, 40)[0]
    params = SamplingParams(max_new_tokens=200, seed=0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    n = len(reference.generate(text, cond, params))
    torch.cuda.synchronize()
    torch_rate = n / (time.perf_counter() - start)
    del reference
    torch.cuda.empty_cache()
    return {"cases": cases, "all_equal": all(c["equal"] for c in cases), "torch_engine_tokens_per_s": torch_rate}


async def _run_batch(engine: VLLMT3Engine, prompts: list[torch.Tensor], cond: T3Cond, tokens: int) -> dict:
    first: list[float] = []
    counts: list[int] = []
    start = time.perf_counter()

    async def one(i: int, text: torch.Tensor) -> None:
        params = SamplingParams(max_new_tokens=tokens, seed=i, min_p=0.0)
        n = 0
        async for _ in engine.stream_async(text, cond, params):
            if n == 0:
                first.append(time.perf_counter() - start)
            n += 1
        counts.append(n)

    await asyncio.gather(*(one(i, t) for i, t in enumerate(prompts)))
    elapsed = time.perf_counter() - start
    total = sum(counts)
    return {
        "requests": len(prompts),
        "tokens": total,
        "seconds": round(elapsed, 3),
        "tokens_per_s": round(total / elapsed, 1),
        "tokens_per_s_per_stream": round(total / elapsed / len(prompts), 1),
        "first_token_s_median": round(sorted(first)[len(first) // 2], 4) if first else None,
        # 25 speech tokens are one second of audio
        "realtime_factor": round(total / elapsed / 25, 1),
    }


def throughput(weights: Path, config: T3Config, cond: T3Cond, args: argparse.Namespace) -> dict:
    total = torch.cuda.get_device_properties(0).total_memory
    options = engine_options(args, max(args.concurrency), total)
    start = time.perf_counter()
    engine = VLLMT3Engine(prefix_only(load_t3(weights, config).eval()).to("cuda"), weights, options)
    startup = time.perf_counter() - start
    runs = []
    try:
        asyncio.run(_run_batch(engine, texts(config, 2, 40), cond, 32))  # warm-up
        for c in args.concurrency:
            runs.append(asyncio.run(_run_batch(engine, texts(config, c, 40), cond, args.tokens)))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        engine.shutdown()
    return {"engine_start_s": round(startup, 1), "options": options.__dict__, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_t3_engine_args(parser)
    parser.add_argument("--parity-tokens", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per request in the throughput runs")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    import vllm

    args.work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "device": torch.cuda.get_device_name(0),
        "vllm": vllm.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    start = time.perf_counter()
    weights, config = write_t3(args.work, args.variant, args.seed)
    report["write_weights_s"] = round(time.perf_counter() - start, 1)
    cond = voice(args.seed)
    if not args.skip_parity:
        report["parity"] = parity(weights, config, cond, args.parity_tokens, 4.0)
        print(json.dumps(report["parity"]), flush=True)
    if not args.skip_throughput:
        report["throughput"] = throughput(weights, config, cond, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
