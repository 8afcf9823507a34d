"""The reference implementation's speed on the benchmark paragraph, for the ratio in benchmarks/e2e.py.

Runs in the oracle environment (chatterbox-tts 0.1.7 and what it imports; see setup_oracle.sh), never in ours.
It loads a checkpoint directory through the reference's own `ChatterboxTTS.from_local` and times its `generate`
on benchmarks/texts.py's paragraph, end to end as a user calls it (T3 in transformers, S3Gen, the watermark).
The one change: `generate` asks T3 for 1000 tokens; random weights rarely stop, so T3's `inference` is capped at
the paragraph's token count (the same cap our benchmark uses) to compare equal amounts of audio.

    python tools/reference/bench_reference.py --ckpt /ckpt/english --device cuda --out reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from texts import PARAGRAPH, PARAGRAPH_TOKENS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="English checkpoint directory (published layout)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=PARAGRAPH_TOKENS)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import chatterbox
    from chatterbox.tts import ChatterboxTTS

    start = time.perf_counter()
    model = ChatterboxTTS.from_local(args.ckpt, args.device)
    load_s = time.perf_counter() - start
    inference = model.t3.inference

    def capped(tokens: int):
        return lambda *a, **k: inference(*a, **{**k, "max_new_tokens": tokens})

    def timed() -> dict[str, float]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        wav = model.generate(PARAGRAPH)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "audio_s": wav.shape[-1] / model.sr}

    model.t3.inference = capped(10)
    timed()  # warm: CUDA kernels, allocator
    model.t3.inference = capped(args.tokens)
    runs = [timed() for _ in range(args.repeats)]
    wall = statistics.median(r["wall_s"] for r in runs)
    audio = statistics.median(r["audio_s"] for r in runs)
    report = {
        "implementation": f"chatterbox-tts {getattr(chatterbox, '__version__', '0.1.7')}",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "load_s": load_s,
        "tokens": args.tokens,
        "runs": runs,
        "rtf": audio / wall,
        "command": "python " + " ".join(sys.argv),
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
