#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): install, make the
# full-size English checkpoint, run the GPU-only tests, then e2e.py's run (vLLM in the benchmark's process; what
# `headline.sh` ran until 2026-12-02, when it became issue 20's headline report of the server as users start it).
# Everything lands in $OUT (run.json, run-log.txt, gpu-tests.txt). Extra arguments go to `e2e.py run`.
set -uo pipefail
source benchmarks/device/prepare.sh
CHATTERBOX_TEST_CHECKPOINTS=/root/test-ckpt python3 -m pytest -q -p no:cacheprovider -k gpu \
  tests/server/test_s3gen_worker.py > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests rc=$?"
python3 -m benchmarks.e2e run --model /root/ckpt/english --preset high --max-batch-size 64 "$@" \
  --out "$OUT/run.json" > "$OUT/run-log.txt" 2>&1
echo "e2e rc=$?"
grep -E '^(t3|paragraph|first_audio|stages) ' "$OUT/run-log.txt" | cut -c1-1500
