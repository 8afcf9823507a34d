"""S3Gen alone on the GPU: where a sentence's vocoding time goes, what graphs / lower precision buy, and how
batches of concurrent pieces (the server's S3Gen worker) scale.

    python -m benchmarks.s3gen_profile --model /ckpt/english [--tokens 75] [--rows 1 16 32 64] [--out s3gen.json]
    python -m benchmarks.s3gen_profile --model /ckpt/english --skip-single --rows 1 16 32 64 \
        --variants fp16_compiled --kernels 64 --out s3gen.json      # the defaults only, plus a kernel table

T3 is loaded with the PyTorch engine (no vLLM needed); only S3Gen is timed. `--kernels ROWS` runs torch.profiler
over one batch of ROWS pieces with the last variant's settings and writes the top kernels by total time (name,
calls, total ms, share of the batch's kernel time) and the kernel launches per batch into the JSON (`kernels`).

The batch profile also times each batch's stages (`{variant}_rows{N}_stages_ms`: mean ms of the flow's encoder
and preparation, its CFM loop and HiFT, the device synchronised around each, in separate runs from the plain
timings). The compiled variants compile HiFT's regions too, as the server's `s3gen_compile` does;
`fp16_compiled_hift_eager` is `fp16_compiled` with HiFT eager, for HiFT before/after in one run:

    python -m benchmarks.s3gen_profile --model /ckpt/english --skip-single --rows 1 16 64 \
        --variants fp16_compiled_hift_eager fp16_compiled --out s3gen-hift.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.conditioning import Conditionals
from chatterbox_vllm.models.s3gen import load_s3gen
from chatterbox_vllm.tts import ChatterboxTTS, VocodeJob


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 5) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tokens", type=int, default=75)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--out")
    parser.add_argument("--skip-single", action="store_true", help="only the batch profile")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="batch profile: which compute variants (fp32 first when listed: the mel reference)")
    parser.add_argument("--kernels", type=int, metavar="ROWS",
                        help="torch.profiler over one batch of ROWS pieces (last variant): top kernels, launches")
    parser.add_argument("--top", type=int, default=25, help="kernels listed with --kernels")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (no graphs, no compiled variants)")
    args = parser.parse_args()
    report: dict = {"tokens": args.tokens, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}

    def progress(batches: dict) -> None:  # after each variant: a run cut short still leaves its figures
        write({**report, "batches": batches}, args.out, quiet=True)

    if args.skip_single:
        report["batches"] = profile_batches(args.model, args.tokens, args.rows, args.variants, progress,
                                            device=args.device, kernel_rows=args.kernels, top=args.top)  # fmt: skip
        write(report, args.out)
        return
    torch.backends.cuda.matmul.allow_tf32 = False  # the single-sentence part starts from full float32
    torch.backends.cudnn.allow_tf32 = False
    directory, layout = resolve_model(args.model)
    config = load_model_config(directory, layout)
    s3gen = load_s3gen(directory / layout.s3gen, config.s3gen).cuda().eval()
    conds = Conditionals.load(directory / layout.conds).to("cuda")
    tokens = torch.randint(0, 6561, (1, args.tokens), device="cuda")
    report["prompt_tokens"] = int(conds.gen["prompt_token"].shape[-1])
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
        s3gen.flow.decoder.enable_cuda_graphs(10, background=False)
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
        s3gen.flow.decoder.enable_cuda_graphs(10, background=False)  # recapture: cuBLAS picks its kernels at capture
        tf32 = s3gen.flow_inference(tokens, conds.gen, noise=noise)
        report["tf32_vs_fp32_mel_max_abs"] = float((tf32 - eager).abs().max())
        report["mel_abs_mean"] = float(eager.abs().mean())
        report["flow_graphs_tf32_s"] = timed(lambda: s3gen.flow_inference(tokens, conds.gen))
        report["hift_tf32_s"] = timed(lambda: s3gen.hift_inference(mel))
        report["sentence_s3gen_graphs_tf32_s"] = timed(lambda: s3gen.inference(tokens, conds.gen))
    print(json.dumps(report), flush=True)
    del s3gen
    report["batches"] = profile_batches(args.model, args.tokens, args.rows, args.variants, progress,
                                        kernel_rows=args.kernels, top=args.top)  # fmt: skip
    write(report, args.out)


def write(report: dict, out: str | None, quiet: bool = False) -> None:
    if not quiet:
        print(json.dumps(report), flush=True)
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)


VARIANTS = {  # label: (TF32, compute dtype, compiled estimator blocks, compiled HiFT regions)
    "fp32": (False, None, False, False),
    "tf32": (True, None, False, False),
    "bf16": (True, torch.bfloat16, False, False),
    "fp16": (True, torch.float16, False, False),
    "tf32_compiled": (True, None, True, True),
    "bf16_compiled": (True, torch.bfloat16, True, True),
    "fp16_compiled_hift_eager": (True, torch.float16, True, False),
    "fp16_compiled": (True, torch.float16, True, True),
}


def stage_times(tts: ChatterboxTTS, run: Callable[[], object], repeats: int = 3) -> dict[str, float]:
    """Mean ms per `run()` (already warm) of the flow's encoder and preparation (the flow's call less its CFM loop),
    the CFM loop and HiFT, each between two device synchronisations: the flow's and HiFT's calls (batched or
    alone) are wrapped on the instance for the duration, the CFM loop timed by forward hooks."""
    flow, hift, decoder = tts.s3gen.flow, tts.s3gen.mel2wav, tts.s3gen.flow.decoder
    totals = dict.fromkeys(("flow", "cfm", "hift"), 0.0)

    def timed_call(key: str, fn: Callable) -> Callable:
        def call(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            sync()
            totals[key] += time.perf_counter() - t0
            return result
        return call

    started: list[float] = []

    def before(*_: object) -> None:
        sync()
        started.append(time.perf_counter())

    def after(*_: object) -> None:
        sync()
        totals["cfm"] += time.perf_counter() - started.pop()

    wrapped = [(flow, "inference_rows", "flow"), (flow, "inference", "flow"), (hift, "inference_rows", "hift"),
               (hift, "inference", "hift")]  # fmt: skip
    for module, name, key in wrapped:
        setattr(module, name, timed_call(key, getattr(module, name)))
    hooks = [decoder.register_forward_pre_hook(before), decoder.register_forward_hook(after)]
    try:
        for _ in range(repeats):
            run()
    finally:
        for hook in hooks:
            hook.remove()
        for module, name, _ in wrapped:
            delattr(module, name)  # the class's method again
    ms = {key: 1e3 * value / repeats for key, value in totals.items()}
    return {"encoder": ms["flow"] - ms["cfm"], "cfm": ms["cfm"], "hift": ms["hift"]}


# Host calls that put work on the GPU: a kernel launch each, or a whole CUDA graph's replay.
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def kernel_table(run: Callable[[], object], device: str, top: int = 25) -> dict:
    """torch.profiler over one `run()` (already warm): the `top` device kernels by total time (name, calls, total
    ms, share of all kernel time), how many kernels ran and how many launch calls the host made. On a CPU the
    operators stand in for kernels (a smoke run of this code, not a figure)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        sync()
    events = prof.key_averages()

    def device_us(e) -> float:  # torch renamed cuda -> device in 2.4; both are read
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0) or 0.0)

    if device == "cuda":
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]  # kernels, copies and memsets
        kernels = [(e.key, e.count, device_us(e)) for e in kernels]
    else:
        kernels = [(e.key, e.count, float(e.self_cpu_time_total)) for e in events if e.key.startswith("aten::")]
    kernels.sort(key=lambda k: -k[2])
    total_us = sum(k[2] for k in kernels)
    launches = {e.key: e.count for e in events if e.key in LAUNCH_CALLS}
    return {
        "device": device,
        "kernel_time_ms": total_us / 1e3,
        "kernels_run": sum(k[1] for k in kernels),
        "distinct_kernels": len(kernels),
        "host_launch_calls": sum(launches.values()),
        "host_launch_calls_by_kind": launches,
        "top": [
            {"name": name[:200], "calls": calls, "total_ms": us / 1e3, "share": us / total_us if total_us else 0.0}
            for name, calls, us in kernels[:top]
        ],
    }


def profile_batches(model: str, tokens: int, rows_list: list[int], variants: list[str] = list(VARIANTS),
                    progress: Callable[[dict], None] | None = None, device: str = "cuda",
                    kernel_rows: int | None = None, top: int = 25) -> dict:  # fmt: skip
    """`ChatterboxTTS.vocode_batch` (flow graphs per batch shape + masked HiFT batch) per batch size, in float32,
    TF32, bfloat16 and float16 compute (`s3gen_dtype`), then each with the estimator's blocks and HiFT's regions
    compiled (`s3gen_compile`; `VARIANTS`); each batch's stages (`stage_times`); how far each moves a sentence's
    mel from the first variant run (fp32 when listed); and how far a graphed batch lands from each piece vocoded
    alone without graphs."""
    out: dict = {"tokens_per_piece": tokens}
    tts = ChatterboxTTS.from_local(model, device=device, engine="torch")
    g = torch.Generator().manual_seed(0)
    most_rows = max([*rows_list, kernel_rows or 1])
    jobs = [VocodeJob(torch.randint(0, 6561, (tokens,), generator=g).tolist(), tts.default_conds, seed=i)
            for i in range(most_rows)]  # fmt: skip
    decoder = tts.s3gen.flow.decoder
    sentence = torch.tensor(jobs[0].tokens, device=device)[None]
    prompt = int(tts.default_conds.gen["prompt_token"].shape[-1])
    noise = torch.randn((1, 80, 2 * (prompt + tokens)), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference_mel = None
        # compiling is one-way (the blocks stay compiled), so the eager variants run first
        for label in sorted(variants, key=lambda v: VARIANTS[v][2]):
            tf32, dtype, compiled, hift_compiled = VARIANTS[label]
            if compiled and device != "cuda":
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            decoder.compute_dtype = dtype
            if device == "cuda":
                decoder.enable_cuda_graphs(10, max_rows=most_rows, background=False)  # recapture with these flags; every batch graphed
            if compiled and not decoder.compiled:
                decoder.compile_blocks()
            hift = tts.s3gen.mel2wav
            if hift_compiled and not hift.compiled:
                hift.compile_blocks()
                t0 = time.perf_counter()
                hift.warm_up_compiled()  # as the server's warm-up does: compiled here, not in the timings
                sync()
                out[f"{label}_hift_compile_s"] = time.perf_counter() - t0
            elif not hift_compiled and hift.compiled:
                hift.uncompile_blocks()
            t0 = time.perf_counter()
            mel = tts.s3gen.flow_inference(sentence, tts.default_conds.gen, noise=noise)
            sync()
            out[f"{label}_first_sentence_s"] = time.perf_counter() - t0  # with the compiled variants: compile time
            if reference_mel is None:
                reference_mel = mel
                graphs = decoder.graphs
                decoder.graphs = None
                eager = [tts.vocode(j.tokens, j.conds, seed=j.seed) for j in jobs[:3]]
                decoder.graphs = graphs
                batched = tts.vocode_batch(jobs[:3])
                out["batch3_graphs_vs_eager_alone_wav_max_abs"] = max(
                    float(abs(a - b).max()) for a, b in zip(eager, batched)
                )
            out[f"{label}_mel_vs_fp32_max_abs"] = float((mel - reference_mel).abs().max())
            out[f"{label}_mel_vs_fp32_mean_abs"] = float((mel - reference_mel).abs().mean())
            print(label, "first sentence s", round(out[f"{label}_first_sentence_s"], 2),
                  "mel vs first variant mean/max", out[f"{label}_mel_vs_fp32_mean_abs"],
                  out[f"{label}_mel_vs_fp32_max_abs"], flush=True)  # fmt: skip
            for rows in rows_list:
                seconds = timed(lambda: tts.vocode_batch(jobs[:rows]), repeats=3)
                audio = rows * (tokens - 1) / 25
                out[f"{label}_rows{rows}_s"] = seconds
                out[f"{label}_rows{rows}_x_real_time"] = audio / seconds
                stages = stage_times(tts, lambda: tts.vocode_batch(jobs[:rows]))
                out[f"{label}_rows{rows}_stages_ms"] = stages
                print(label, rows, round(seconds, 4), round(audio / seconds, 1),
                      " ".join(f"{k} {v:.1f} ms" for k, v in stages.items()), flush=True)  # fmt: skip
            first = VocodeJob(jobs[0].tokens[:10], tts.default_conds, seed=0)  # the first partial vocode of a stream
            out[f"{label}_first_partial_10_tokens_s"] = timed(lambda: tts.vocode_batch([first]))
            if progress is not None:
                progress(out)
        out["mel_abs_mean"] = float(reference_mel.abs().mean())
        if kernel_rows:
            batch = jobs[:kernel_rows]
            tts.vocode_batch(batch)  # warm: this shape's graph captured, outside the profile
            sync()
            out["kernels"] = {"rows": kernel_rows, "variant": label, **kernel_table(lambda: tts.vocode_batch(batch),
                                                                                     device, top)}  # fmt: skip
            print("kernels", json.dumps({k: v for k, v in out["kernels"].items() if k != "top"}), flush=True)
    tts.close()
    return out


if __name__ == "__main__":
    main()
