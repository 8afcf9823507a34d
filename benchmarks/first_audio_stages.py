"""Where first audio goes at 16 concurrent (issue 20, headline note 6): the server as users start it, bursts of
streamed sentences at 1 and at `--concurrency`, each burst with the server's own stage means (prepare, T3 to the
first partial's tokens, that partial's S3Gen wait and vocode: `chatterbox_first_audio_stage_seconds`) and the
S3Gen and T3 metrics' deltas. A diagnostic of one device call, not a headline figure:

    python -m benchmarks.first_audio_stages --model /root/ckpt/english --work /root/stages --out $OUT/stages.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.headline import (
    SENTENCE_TOKENS,
    ServerProcess,
    delta,
    fresh_dir,
    measure_burst_ttfb,
    requests,
    scrape,
)
from benchmarks.host import command_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--preset", default="high")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"command": command_line()}
    with ServerProcess(args.model, args.preset, fresh_dir(args.work / "cache"), args.work / "server.log",
                       SENTENCE_TOKENS) as server:  # fmt: skip
        out["server"] = server.describe()
        requests(server.url, 1)  # lazy work of the first request
        for level in (1, args.concurrency):
            before = scrape(server.url)
            out[f"c{level}"] = measure_burst_ttfb(server.url, level, args.bursts)
            out[f"c{level}"]["metrics_delta"] = delta(before, scrape(server.url))
            print(f"c{level}", json.dumps({k: v for k, v in out[f"c{level}"].items() if k != "metrics_delta"}),
                  flush=True)  # fmt: skip
            args.out.write_text(json.dumps(out, indent=2))  # each level as it ends: a call cut short keeps it


if __name__ == "__main__":
    main()
