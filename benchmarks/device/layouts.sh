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
  # The daemon's pipes and logs where this call can write and read them; a server start that hangs under MPS is
  # stopped after BENCH_READY_TIMEOUT_S with every process's stacks in its log (headline.ServerProcess).
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps CUDA_MPS_LOG_DIRECTORY=/root/mps-log
  export BENCH_READY_TIMEOUT_S="${LAYOUTS_READY_TIMEOUT_S:-240}"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv  # a CUDA process already here blocks MPS
  if nvidia-cuda-mps-control -d; then mps=1; echo "MPS control daemon started"; else echo "MPS not available here"; fi
fi
echo "start $(date +%T)"
work=/root/layouts-work
mkdir -p "$work"
timeout -s TERM "${LAYOUTS_TIMEOUT_S:-500}" python3 -m benchmarks.layouts --model /root/ckpt/english --preset high \
  --work "$work" --out "$OUT/layouts.json" "$@" > "$OUT/layouts-log.txt" 2>&1
echo "layouts rc=$? at $(date +%T)"
if [ $mps = 1 ]; then
  echo get_server_list | nvidia-cuda-mps-control
  echo quit | nvidia-cuda-mps-control
  mkdir -p "$OUT/mps-log" && cp "$CUDA_MPS_LOG_DIRECTORY"/* "$OUT/mps-log/" 2>/dev/null
  tail -20 "$CUDA_MPS_LOG_DIRECTORY"/control.log "$CUDA_MPS_LOG_DIRECTORY"/server.log 2>/dev/null | cut -c1-300
fi
mkdir -p "$OUT/layouts-logs" && cp "$work"/*.log "$OUT/layouts-logs/" 2>/dev/null
grep -E '^(server ready|thread|process) ' "$OUT/layouts-log.txt" | cut -c1-1500
tail -5 "$OUT/layouts-log.txt" | cut -c1-1500
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
