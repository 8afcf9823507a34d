"""Host time of T3's logits processor per decode step, outside vLLM (a steady A/B figure on a busy machine).

Drives the processor (`CFGLogitsProcessor` or `TurboLogitsProcessor`) the way vLLM's model runner does: one
BatchUpdate adding `--batch` requests, then per step one new token in each request's list and one `apply` on
`[batch, 2 x 8194]` float32 logits (the sampler's dtype), timing `apply` alone. The full-size vocabulary and token
ids; the device is the GPU when there is one. To compare two versions of the processor, run this script twice with
PYTHONPATH pointing at each version's `src` (the processor is imported from `chatterbox_vllm`). Usage:
    python -m benchmarks.t3_processor_step --batch 1 8 64 [--steps 500] [--turbo] [--out report.json]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate

from chatterbox_vllm.engine.vllm_t3.logits import CFGLogitsProcessor, TurboLogitsProcessor
from chatterbox_vllm.engine.vllm_t3.plugin import CFG_WEIGHT, REPETITION_PENALTY, TEMPERATURE, TOP_K, TOP_P
from chatterbox_vllm.models.t3.config import T3Config


def processor(turbo: bool, slots: int, device: torch.device):
    config = T3Config.for_variant("turbo" if turbo else "english")
    t3 = {"speech_tokens_dict_size": config.speech_tokens_dict_size, "start_speech_token": config.start_speech_token}
    vllm_config = SimpleNamespace(
        model_config=SimpleNamespace(hf_config=SimpleNamespace(chatterbox_t3=t3)),
        scheduler_config=SimpleNamespace(max_num_seqs=slots),
    )
    cls = TurboLogitsProcessor if turbo else CFGLogitsProcessor
    return cls(vllm_config, device, device.type == "cuda"), config


def settings(turbo: bool) -> SamplingParams:
    if turbo:
        args = {TEMPERATURE: 0.8, TOP_K: 1000, TOP_P: 0.95, REPETITION_PENALTY: 1.2}
    else:
        args = {CFG_WEIGHT: 0.5, REPETITION_PENALTY: 1.2}
    return SamplingParams(extra_args=args)


def run(batch: int, steps: int, turbo: bool, device: torch.device) -> dict:
    proc, config = processor(turbo, max(batch, 8), device)
    histories: list[list[int]] = [[] for _ in range(batch)]
    added = [(i, settings(turbo), None, histories[i]) for i in range(batch)]
    proc.update_state(BatchUpdate(batch_size=batch, removed=[], added=added, moved=[]))
    width = config.speech_tokens_dict_size * (1 if turbo else 2)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(batch, width, generator=g) * 3).to(device)
    tokens = torch.randint(0, config.speech_tokens_dict_size - 2, (steps, batch), generator=g).tolist()
    times = []

    def step(index: int, profiler: cProfile.Profile | None = None) -> None:
        for row, history in enumerate(histories):
            history.append(tokens[index % steps][row])
        fresh = logits.clone()
        start = time.perf_counter()
        if profiler is None:
            proc.apply(fresh)
        else:
            profiler.runcall(proc.apply, fresh)
        times.append(time.perf_counter() - start)

    for index in range(steps):
        step(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    warm = times[steps // 10 :]
    # Load-independent counts of host work: torch ops dispatched (each one a kernel launch on a GPU; the clone of
    # the input is not counted) and Python calls, per apply.
    counted = 20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for index in range(counted):
            step(index)
    top_level = [e for e in prof.events() if e.cpu_parent is None and e.name != "aten::clone"]
    profiler = cProfile.Profile()
    for index in range(counted):
        step(index, profiler)
    calls = pstats.Stats(profiler).total_calls
    return {
        "batch": batch,
        "chain": "turbo" if turbo else "cfg",
        "apply_us_median": round(1e6 * statistics.median(warm), 1),
        "apply_us_mean": round(1e6 * statistics.fmean(warm), 1),
        "torch_ops_per_apply": round(len(top_level) / counted, 1),
        "python_calls_per_apply": round(calls / counted, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--turbo", action="store_true", help="Turbo's chain instead of CFG + penalty")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a busy host)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [run(batch, args.steps, args.turbo, device) for batch in args.batch]
    for result in runs:
        print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": device.type, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
