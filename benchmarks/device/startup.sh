#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage: a cold start of `chatterbox-vllm serve` (empty compile
# caches) and a warm one (the caches it left), full-size English checkpoint, preset high, the server's default
# process layout (benchmarks/startup.py). Extra arguments go to startup.py. Lands in $OUT (startup.json and
# startup-logs/ with both starts' logs).
set -uo pipefail
source benchmarks/device/prepare.sh
python3 -m benchmarks.startup --model /root/ckpt/english --preset high --cache-dir /root/startup-cache "$@" \
  --out "$OUT/startup.json" 2>&1 | tail -5
echo "startup rc=${PIPESTATUS[0]}"
