"""Where a T3 decode step's time goes on the GPU (a diagnostic beside t3_vllm.py).

Runs vLLM in this process (`vllm.LLM` with VLLM_ENABLE_V1_MULTIPROCESSING=0: no frontend, no IPC), so the timings
are the engine core's own: the scheduler, input preparation, the model (CUDA graphs or not), CFG and the sampler.
Prints tok/s per stream for a few batch sizes, with and without per-request seeds, then a cProfile of one stream
(Python hot spots) and a torch profiler summary (kernel time, launches per step). Compare
CHATTERBOX_T3_COMPILE=0 and =1 by running it twice. Usage:
    python -m benchmarks.t3_profile --work /tmp/t3 --out profile.json [--batches 1 32 64] [--tokens 300]
On CPU (a smoke test of the script): --size tiny --dtype float32.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
from benchmarks.t3_args import add_t3_engine_args, engine_options  # noqa: E402
from benchmarks.t3_vllm import texts, voice, write_t3  # noqa: E402

from chatterbox_vllm.engine.base import SamplingParams  # noqa: E402
from chatterbox_vllm.engine.factory import prefix_only  # noqa: E402
from chatterbox_vllm.engine.vllm_engine import (  # noqa: E402
    _prepare_process_environment,
    engine_kwargs,
    vllm_sampling_params,
)
from chatterbox_vllm.engine.vllm_t3 import plugin  # noqa: E402
from chatterbox_vllm.engine.vllm_t3.model_dir import prepare_model_dir  # noqa: E402
from chatterbox_vllm.models.t3 import load_t3  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU only to smoke-test this script


def build(args: argparse.Namespace):
    weights, config = write_t3(args.work, args.variant, args.seed, args.size)
    _prepare_process_environment()
    plugin.register()
    import vllm

    total = torch.cuda.get_device_properties(0).total_memory if DEVICE == "cuda" else 64 * 2**30
    options = engine_options(args, max(args.batches), total)
    kwargs = engine_kwargs(prepare_model_dir(weights, config), options)
    kwargs.pop("disable_log_stats", None)
    start = time.perf_counter()
    llm = vllm.LLM(**kwargs)
    startup = time.perf_counter() - start
    prefix = prefix_only(load_t3(weights, config).eval()).to(DEVICE)
    cond = voice(args.seed).to(DEVICE)
    return llm, prefix, cond, config, options, startup


def prompts(prefix, cond, config, count: int, dtype: torch.dtype) -> list[dict]:
    out = []
    with torch.inference_mode():
        for text in texts(config, count, 40):
            rows = prefix.prefill_embeds(cond, text.to(DEVICE), cfg=True)
            out.append({"prompt_embeds": torch.cat((rows[0], rows[1]), dim=-1).to(device="cpu", dtype=dtype)})
    return out


def timed(llm, batch: list[dict], config, tokens: int, seeded: bool) -> dict:
    params = [
        vllm_sampling_params(SamplingParams(max_new_tokens=tokens, seed=i if seeded else None), config, min_tokens=tokens)
        for i in range(len(batch))
    ]
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outs = llm.generate(batch, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    total = sum(len(o.outputs[0].token_ids) for o in outs)
    return {
        "batch": len(batch),
        "seeded": seeded,
        "tokens": total,
        "seconds": round(elapsed, 4),
        "tok_per_s_per_stream": round(total / elapsed / len(batch), 1),
        "ms_per_step": round(1000 * elapsed / (total / len(batch)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_t3_engine_args(parser)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 64])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    llm, prefix, cond, config, options, startup = build(args)
    dtype = getattr(torch, args.dtype)
    report: dict = {
        "compile": os.environ.get("CHATTERBOX_T3_COMPILE", "1"),
        "options": options.__dict__,
        "engine_start_s": round(startup, 1),
        "runs": [],
    }
    print(json.dumps({k: report[k] for k in ("compile", "engine_start_s")}), flush=True)
    timed(llm, prompts(prefix, cond, config, 2, dtype), config, 32, False)  # warm-up
    for batch in args.batches:
        for seeded in (False, True) if batch > 1 else (False,):
            run = timed(llm, prompts(prefix, cond, config, batch, dtype), config, args.tokens, seeded)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)

    one = prompts(prefix, cond, config, 1, dtype)
    profiler = cProfile.Profile()
    profiler.enable()
    timed(llm, one, config, args.tokens, False)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
    stats.print_stats(25)
    report["cprofile_tottime"] = text.getvalue()
    print(report["cprofile_tottime"][-6000:], flush=True)

    steps = 60
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        timed(llm, one, config, steps, False)
    averages = prof.key_averages()
    launches = {e.key: e.count for e in averages if e.key in ("cudaLaunchKernel", "cudaGraphLaunch", "cuLaunchKernel")}
    report["launches_per_step"] = {k: round(v / steps, 1) for k, v in launches.items()}
    report["kernels_by_cuda_time"] = averages.table(sort_by="self_cuda_time_total", row_limit=15)
    report["ops_by_cpu_time"] = averages.table(sort_by="self_cpu_time_total", row_limit=20)
    print(json.dumps(report["launches_per_step"]), flush=True)
    print(report["kernels_by_cuda_time"], flush=True)
    print(report["ops_by_cpu_time"], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
