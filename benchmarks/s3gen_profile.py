"""S3Gen alone on the GPU: where a sentence's vocoding time goes, and what compile / lower precision buy.

    python benchmarks/s3gen_profile.py --model /ckpt/english [--tokens 75]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.conditioning import Conditionals
from chatterbox_vllm.models.s3gen import load_s3gen


def timed(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=75)
    args = parser.parse_args()
    directory, layout = resolve_model(args.model)
    config = load_model_config(directory, layout)
    s3gen = load_s3gen(directory / layout.s3gen, config.s3gen).cuda().eval()
    conds = Conditionals.load(directory / layout.conds).to("cuda")
    tokens = torch.randint(0, 6561, (1, args.tokens), device="cuda")
    report: dict[str, float] = {"prompt_tokens": int(conds.gen["prompt_token"].shape[-1]), "tokens": args.tokens}
    with torch.inference_mode():
        mel = s3gen.flow_inference(tokens, conds.gen)
        report["flow_fp32_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen))
        report["flow_1step_fp32_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen, n_timesteps=1))
        report["hift_fp32_s"] = timed(lambda: s3gen.hift_inference(mel))
        ref = s3gen._ref_inputs(conds.gen)
        token_len = torch.tensor([args.tokens], device="cuda")
        report["encoder_fp32_s"] = timed(lambda: s3gen.flow.prepare(tokens, token_len, ref["prompt_token"],
                                                                     ref["prompt_token_len"], ref["prompt_feat"], ref["embedding"]))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            report["flow_bf16_autocast_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen))
            report["hift_bf16_autocast_s"] = timed(lambda: s3gen.hift_inference(mel))
        print(json.dumps(report), flush=True)
        # CUDA graphs of the ODE loop (what ChatterboxTTS enables on a GPU): speed, and agreement with eager
        generator = torch.Generator(device="cuda")
        noise_frames = 2 * (report["prompt_tokens"] + args.tokens)
        noise = torch.randn((1, 80, noise_frames), generator=generator.manual_seed(0), device="cuda")
        eager = s3gen.flow_inference(tokens, conds.gen, noise=noise)
        s3gen.flow.decoder.enable_cuda_graphs(10)
        t0 = time.perf_counter()
        graphed = s3gen.flow_inference(tokens, conds.gen, noise=noise)
        torch.cuda.synchronize()
        report["graph_capture_first_call_s"] = time.perf_counter() - t0
        report["graph_vs_eager_max_abs"] = float((graphed - eager).abs().max())
        report["flow_graphs_fp32_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen))
        report["sentence_s3gen_graphs_s"] = timed(lambda: s3gen.inference(tokens, conds.gen))
        # TF32 matmuls (tensor cores) for S3Gen's float32: speed, and how far the mel moves
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        s3gen.flow.decoder.enable_cuda_graphs(10)  # recapture: cuBLAS picks its kernels at capture
        tf32 = s3gen.flow_inference(tokens, conds.gen, noise=noise)
        report["tf32_vs_fp32_mel_max_abs"] = float((tf32 - eager).abs().max())
        report["mel_abs_mean"] = float(eager.abs().mean())
        report["flow_graphs_tf32_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen))
        report["hift_tf32_s"] = timed(lambda: s3gen.hift_inference(mel))
        report["sentence_s3gen_graphs_tf32_s"] = timed(lambda: s3gen.inference(tokens, conds.gen))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
