#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (vllm, deps, prod): T3 beside S3Gen with vLLM's engine in
# the same process (inprocess_contention.py), then contention.py on the same host for the two-process figures, then
# contention.py under NVIDIA MPS with the daemon's logs kept (its first try hung without a word). Lands in $OUT.
set -uo pipefail
source benchmarks/device/prepare.sh
python3 -m benchmarks.inprocess_contention --model /root/ckpt/english --out "$OUT/inprocess.json" \
  > "$OUT/inprocess.txt" 2>&1
echo "inprocess rc=$?"; tail -1 "$OUT/inprocess.txt" | cut -c1-2500
timeout 200 python3 -m benchmarks.contention --model /root/ckpt/english --out "$OUT/contention-plain.json" \
  > "$OUT/contention-plain.txt" 2>&1
echo "plain rc=$?"; tail -1 "$OUT/contention-plain.txt" | cut -c1-2000
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "mps started"
  timeout "${MPS_TIMEOUT:-150}" python3 -m benchmarks.contention --model /root/ckpt/english --label mps \
    --out "$OUT/contention-mps.json" > "$OUT/contention-mps.txt" 2>&1
  echo "mps rc=$?"; tail -3 "$OUT/contention-mps.txt" | cut -c1-2000
  echo quit | nvidia-cuda-mps-control
  cp -r /tmp/mps-log "$OUT/mps-log" 2>/dev/null
else
  echo "no nvidia-cuda-mps-control on this machine"
fi
