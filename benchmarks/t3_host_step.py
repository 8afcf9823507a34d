"""Host time per T3 decode step, split by who spends it (step 4 of issue 20: before/after figures).

Runs vLLM in this process (`vllm.LLM`, VLLM_ENABLE_V1_MULTIPROCESSING=0) like `t3_profile.py`, decodes one stream
(and any other --batches) under cProfile and splits the engine core's step into:

* `processor_ms`: T3's logits processor (`apply` and `update_state`: CFG mix, penalty mask, per-row settings);
* `model_ms`: the model's forward Python (`forward`, `embed_input_ids`, `compute_logits`); on CPU this includes
  the CPU kernels themselves, on a GPU only their launches (or a CUDA graph replay);
* `rest_ms`: everything else in the engine core's step (scheduling, input preparation, attention metadata,
  sampling, output processing).

cProfile adds its own overhead per Python call, so `profiled_step_ms` is larger than `step_ms` (wall time without
the profiler); compare shares and before/after, not absolute profiled numbers with unprofiled ones. On a GPU it
also reports the kernel time per step (torch profiler). Usage (CPU smoke size):
    python -m benchmarks.t3_host_step --work /tmp/t3 --size tiny --dtype float32 --out host-step.json
GPU (full size):
    python -m benchmarks.t3_host_step --work /root/t3 --out $OUT/t3-host-step.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402
from benchmarks.t3_args import add_t3_engine_args  # noqa: E402
from benchmarks.t3_profile import DEVICE, build, prompts, timed  # noqa: E402



def code_keys(*functions) -> set[tuple[str, int, str]]:
    """cProfile's keys (file, first line, name) of these functions; ones the installed vLLM lacks are None."""
    return {(f.__code__.co_filename, f.__code__.co_firstlineno, f.__code__.co_name) for f in functions if f is not None}


def shares() -> dict[str, set]:
    """The outermost functions of each share: nested calls are inside their cumulative time already."""
    from vllm.v1.engine.core import EngineCore

    from chatterbox_vllm.engine.vllm_t3 import gpt2_model, logits, model

    processor = [logits._T3LogitsProcessor.update_state, logits.CFGLogitsProcessor.apply]
    processor.append(logits.TurboLogitsProcessor.apply)
    forward = []
    for cls in (model.ChatterboxT3ForVLLM, gpt2_model.ChatterboxGPT2T3ForVLLM):
        forward += [cls.forward, cls.embed_input_ids, cls.compute_logits]
    step = [getattr(EngineCore, name, None) for name in ("step", "step_with_batch_queue")]
    return {"processor": code_keys(*processor), "model": code_keys(*forward), "step": code_keys(*step)}


def cumulative(stats: pstats.Stats, keys: set) -> tuple[float, int]:
    """Seconds inside these functions (callees included) and how often they ran."""
    seconds, calls = 0.0, 0
    for key in keys & set(stats.stats):
        _cc, ncalls, _tt, cumtime, _callers = stats.stats[key]
        seconds += cumtime
        calls += ncalls
    return seconds, calls


# vLLM functions inside the "rest", reported by name where the installed vLLM has them (ms per step, callees
# included, so they overlap: `_prepare_inputs` holds `_calc_mrope_positions`).
VLLM_PARTS = {
    "schedule": "vllm/v1/core/sched/scheduler.py",
    "_prepare_inputs": "vllm/v1/worker/gpu_model_runner.py",
    "_calc_mrope_positions": "vllm/v1/worker/gpu_model_runner.py",
    "_preprocess": "vllm/v1/worker/gpu_model_runner.py",
    "_build_attention_metadata": "vllm/v1/worker/gpu_model_runner.py",
    "update_async_output_token_ids": "vllm/v1/worker/gpu_input_batch.py",
    "sample_tokens": "vllm/v1/worker/gpu_model_runner.py",
    "_bookkeeping_sync": "vllm/v1/worker/gpu_model_runner.py",
    "update_from_output": "vllm/v1/core/sched/scheduler.py",
}


def vllm_parts(stats: pstats.Stats, steps: int) -> dict[str, float]:
    out = {}
    for (path, _line, name), (_cc, _nc, _tt, cumtime, _callers) in stats.stats.items():
        suffix = VLLM_PARTS.get(name)
        if suffix and path.replace(os.sep, "/").endswith(suffix):
            out[name] = round(out.get(name, 0.0) + cumtime * 1000 / max(steps, 1), 3)
    return out


def host_split(llm, batch: list[dict], config, tokens: int) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    run = timed(llm, batch, config, tokens, False)
    profiler.disable()
    stats = pstats.Stats(profiler)
    keys = shares()
    step_s, steps = cumulative(stats, keys["step"])
    processor_s, _ = cumulative(stats, keys["processor"])
    model_s, _ = cumulative(stats, keys["model"])
    per = 1000 / max(steps, 1)
    return {
        "profiled_steps": steps,
        "profiled_step_ms": round(step_s * per, 3),
        "processor_ms": round(processor_s * per, 3),
        "model_ms": round(model_s * per, 3),
        "rest_ms": round((step_s - processor_s - model_s) * per, 3),
        "profiled_tok_per_s_per_stream": run["tok_per_s_per_stream"],
        "vllm_parts_ms": vllm_parts(stats, steps),
    }


def kernel_ms_per_step(llm, batch: list[dict], config, steps: int) -> float:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        timed(llm, batch, config, steps, False)
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return round(total_us / 1000 / steps, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_t3_engine_args(parser)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3, help="unprofiled runs per batch; the median is reported")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    llm, prefix, cond, config, options, startup = build(args)
    dtype = getattr(torch, args.dtype)
    report: dict = {"device": DEVICE, "size": args.size, "engine_start_s": round(startup, 1), "runs": []}
    if DEVICE == "cuda":
        report["device_name"] = torch.cuda.get_device_name(0)
    timed(llm, prompts(prefix, cond, config, 2, dtype), config, 32, False)  # warm-up
    for size in args.batches:
        batch = prompts(prefix, cond, config, size, dtype)
        walls = sorted(timed(llm, batch, config, args.tokens, False)["ms_per_step"] for _ in range(args.repeats))
        run = {"batch": size, "step_ms": walls[len(walls) // 2], "tok_per_s_per_stream": None}
        run["tok_per_s_per_stream"] = round(1000 / run["step_ms"], 1)
        run.update(host_split(llm, batch, config, args.tokens))
        if DEVICE == "cuda":
            run["kernel_ms_per_step"] = kernel_ms_per_step(llm, batch, config, 60)
        report["runs"].append(run)
        print(json.dumps(run), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
