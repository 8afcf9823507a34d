#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): issue 20 step 3, S3Gen on
# a thread of the server (CHATTERBOX_S3GEN_LAYOUT=thread) against S3Gen in a worker process of its own (=process), in
# one device call: for each layout the English server as users start it (headline.py's ServerProcess, preset high),
# then 64 concurrent sentences (one unmeasured burst, 3 measured): x real time, S3Gen's busy share, audio per S3Gen
# busy second, first-byte percentiles (benchmarks/layouts.py).
#   bash benchmarks/device/layouts.sh                       # thread, then process            -> $OUT/layouts.json
#   bash benchmarks/device/layouts.sh --layouts process thread   # the other order (the first start compiles)
# Extra arguments go to layouts.py. On one GPU the two processes time-slice unless NVIDIA MPS runs; with
# LAYOUTS_MPS=1 each server runs with CHATTERBOX_CUDA_MPS=true (its own MPS control daemon, started and stopped by it).
# Logs: $OUT/layouts-log.txt and each server's log in $OUT/layouts-logs/. The shared cache stays on the machine
# (/root/layouts-work/cache), so a second call starts warm.
set -uo pipefail
source benchmarks/device/prepare.sh
mps=0
if [ "${LAYOUTS_MPS:-0}" = 1 ]; then
  # The product's own opt-in (CHATTERBOX_CUDA_MPS, cuda_mps.py): the server starts a private MPS control daemon with
  # its pipes and logs in the cache directory before its first CUDA context, and stops it when it stops. A start that
  # hangs under MPS is stopped after BENCH_READY_TIMEOUT_S with every process's stacks in its log.
  export CHATTERBOX_CUDA_MPS=true BENCH_READY_TIMEOUT_S="${LAYOUTS_READY_TIMEOUT_S:-240}"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv  # a CUDA process already here blocks MPS
  mps=1
fi
echo "start $(date +%T)"
work=/root/layouts-work
mkdir -p "$work"
timeout -s TERM "${LAYOUTS_TIMEOUT_S:-500}" python3 -m benchmarks.layouts --model /root/ckpt/english --preset high \
  --work "$work" --out "$OUT/layouts.json" "$@" > "$OUT/layouts-log.txt" 2>&1
echo "layouts rc=$? at $(date +%T)"
if [ $mps = 1 ]; then  # the daemon's logs, from the cache directory the server used
  mkdir -p "$OUT/mps-log" && cp /root/layouts-work/cache/chatterbox-vllm/mps/log/* "$OUT/mps-log/" 2>/dev/null
  grep -h "NVIDIA MPS" /root/layouts-work/*.log 2>/dev/null | cut -c1-300
  tail -5 "$OUT"/mps-log/control.log 2>/dev/null | cut -c1-300
fi
mkdir -p "$OUT/layouts-logs" && cp "$work"/*.log "$OUT/layouts-logs/" 2>/dev/null
grep -E '^(server ready|thread|process) ' "$OUT/layouts-log.txt" | cut -c1-1500
tail -5 "$OUT/layouts-log.txt" | cut -c1-1500
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
