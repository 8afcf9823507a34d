#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): issue 22 point 3 in one
# device call: the English server as users start it (preset high), single sentences at 1 a second idle and beside a
# long job, the job alone, then 64 concurrent sentences (benchmarks/jobs.py) -> $OUT/jobs.json.
#   bash benchmarks/device/jobs.sh [extra jobs.py arguments]
set -uo pipefail
source benchmarks/device/prepare.sh
echo "start $(date +%T)"
work=/root/jobs-work
mkdir -p "$work"
timeout -s TERM "${JOBS_TIMEOUT_S:-540}" python3 -m benchmarks.jobs --model /root/ckpt/english --preset high \
  --work "$work" --out "$OUT/jobs.json" "$@" > "$OUT/jobs-log.txt" 2>&1
echo "jobs rc=$? at $(date +%T)"
cp "$work"/*.log "$OUT/" 2>/dev/null
grep -E '^(server ready|idle|beside|job alone|figures) ' "$OUT/jobs-log.txt" | cut -c1-1500
tail -5 "$OUT/jobs-log.txt" | cut -c1-1500
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
