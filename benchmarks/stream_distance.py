"""How far a streamed piece's audio lies from the same piece vocoded whole, and what its partial vocodes cost.

    python -m benchmarks.stream_distance --model random-tiny [--device cpu] [--pieces 5] [--out distance.json]
    python -m benchmarks.stream_distance --model english --device cuda --out distance.json      # the real figure

Each of the paragraph's sentences is spoken by T3 (the PyTorch engine: no vLLM needed; random checkpoints, which
never sample the stop token, stop at the speaking pace their config records), then fed token by token to the incremental
vocoder as the server does, and the stream compared with `ChatterboxTTS.vocode` of the whole piece (same noise and
seed) by `incremental.distance_to_whole`: rms of the difference over the whole piece's rms, for the waveform and
for STFT magnitudes. Also per piece: the partials made, the tokens each put through the flow (bounded by the voice
prompt, the left context and one chunk; the growing-prefix vocoder of 2026-12-01 put the whole prefix through), and
the first partial's time (on a GPU: the S3Gen share of first audio).

The growing-prefix vocoder it replaced is measured the same way with
`git show 45cb59e:src/chatterbox_vllm/incremental.py > src/chatterbox_vllm/incremental_before.py` and
`--module chatterbox_vllm.incremental_before` (delete the copy afterwards).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchmarks.texts import PARAGRAPH

from chatterbox_vllm.text.chunking import split_for_synthesis
from chatterbox_vllm.tts import ChatterboxTTS


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def prefix_flow_tokens(vocoder: Any, tokens: list[int]) -> int:
    """Tokens the growing-prefix vocoder's next partial puts through the flow: the voice prompt and the prefix."""
    return int(vocoder.prompt_frames // 2 + len(tokens))


def stream_piece(module: Any, tts: ChatterboxTTS, tokens: list[int], seed: int, first_tokens: int) -> dict[str, Any]:
    vocoder = module.IncrementalVocoder(
        tts, tts.default_conds, max_tokens=len(tokens) + 1, seed=seed, first_tokens=first_tokens
    )
    parts, sizes, times = [], [], []
    for n in range(1, len(tokens) + 1):
        if not vocoder.due(n):
            continue
        sync()
        started = time.perf_counter()
        if hasattr(vocoder, "partial_job"):
            job = vocoder.partial_job(tokens[:n])
            if job is None:
                continue
            sizes.append(job.padded_tokens)
            audio = vocoder.take_partial(job, module.vocode_partials(tts, [job])[0])
        else:
            sizes.append(prefix_flow_tokens(vocoder, tokens[:n]))
            audio = vocoder.push(tokens[:n], final=False)
        sync()
        times.append(1000 * (time.perf_counter() - started))
        parts.append(audio)
    parts.append(vocoder.push(tokens, final=True))
    streamed = np.concatenate(parts)
    whole_job = vocoder.job(tokens)
    whole = tts.vocode(whole_job.tokens, whole_job.conds, seed=whole_job.seed, noise=whole_job.noise)
    assert len(streamed) == len(whole), (len(streamed), len(whole))
    distance = module_distance(streamed, whole)
    return {"tokens": len(tokens), "partials": len(sizes), "flow_tokens": sizes, "partial_ms": times, **distance}


def module_distance(streamed: np.ndarray, whole: np.ndarray) -> dict[str, float]:
    from chatterbox_vllm.incremental import distance_to_whole

    return distance_to_whole(streamed, whole)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random-tiny")
    parser.add_argument("--device", default=None)
    parser.add_argument("--module", default="chatterbox_vllm.incremental")
    parser.add_argument("--pieces", type=int, default=5)
    parser.add_argument("--first-tokens", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out")
    args = parser.parse_args()
    module = importlib.import_module(args.module)
    tts = ChatterboxTTS.from_pretrained(args.model, device=args.device, engine="torch")
    params = tts.sampling_params(seed=args.seed, max_new_tokens=1000)  # random checkpoints stop at their pace
    pieces = []
    with torch.inference_mode():
        for index, text in enumerate(split_for_synthesis(PARAGRAPH, 100)[: args.pieces]):
            text_tokens = tts.text_tokens(text).to(tts.device)
            tokens = tts.engine.generate(text_tokens, tts.default_conds.t3, tts.piece_params(text_tokens, params))
            pieces.append(stream_piece(module, tts, tokens, args.seed + index, args.first_tokens))
    report = {
        "model": args.model,
        "device": str(tts.device),
        "module": args.module,
        "wave_median": statistics.median(p["wave"] for p in pieces),
        "wave_max": max(p["wave"] for p in pieces),
        "spectrum_median": statistics.median(p["spectrum"] for p in pieces),
        "spectrum_max": max(p["spectrum"] for p in pieces),
        "first_partial_ms_median": statistics.median(p["partial_ms"][0] for p in pieces if p["partial_ms"]),
        "pieces": pieces,
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "pieces"}, indent=1))
    for p in pieces:
        print(f"{p['tokens']} tokens: {p['partials']} partials, flow tokens {p['flow_tokens']}, "
              f"wave {p['wave']:.3f} spectrum {p['spectrum']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
