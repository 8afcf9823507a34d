#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): issue 20 step 3, S3Gen on
# a thread of the server (CHATTERBOX_S3GEN_LAYOUT=thread) against S3Gen in a worker process of its own (=process), in
# one device call: for each layout the English server as users start it (headline.py's ServerProcess, preset high),
# then 64 concurrent sentences (one unmeasured burst, 3 measured): x real time, S3Gen's busy share, audio per S3Gen
# busy second, first-byte percentiles (benchmarks/layouts.py).
#   bash benchmarks/device/layouts.sh                       # thread, then process            -> $OUT/layouts.json
#   bash benchmarks/device/layouts.sh --layouts process thread   # the other order (the first start compiles)
# Extra arguments go to layouts.py. On one GPU the two processes time-slice unless NVIDIA MPS runs; with
# LAYOUTS_MPS=1 the MPS control daemon is started for the call (where the machine allows it) and stopped after.
# Logs: $OUT/layouts-log.txt and each server's log in $OUT/layouts-logs/. The shared cache stays on the machine
# (/root/layouts-work/cache), so a second call starts warm.
set -uo pipefail
source benchmarks/device/prepare.sh
mps=0
if [ "${LAYOUTS_MPS:-0}" = 1 ]; then
  if nvidia-cuda-mps-control -d; then mps=1; echo "MPS control daemon started"; else echo "MPS not available here"; fi
fi
echo "start $(date +%T)"
work=/root/layouts-work
mkdir -p "$work"
timeout -s TERM "${LAYOUTS_TIMEOUT_S:-500}" python3 -m benchmarks.layouts --model /root/ckpt/english --preset high \
  --work "$work" --out "$OUT/layouts.json" "$@" > "$OUT/layouts-log.txt" 2>&1
echo "layouts rc=$? at $(date +%T)"
[ $mps = 1 ] && echo quit | nvidia-cuda-mps-control
mkdir -p "$OUT/layouts-logs" && cp "$work"/*.log "$OUT/layouts-logs/" 2>/dev/null
grep -E '^(server ready|thread|process) ' "$OUT/layouts-log.txt" | cut -c1-1500
tail -5 "$OUT/layouts-log.txt" | cut -c1-1500
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
