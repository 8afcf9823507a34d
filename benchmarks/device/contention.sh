#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage: benchmarks/contention.py as is, then under NVIDIA MPS
# (when the image has its control daemon). JSON and logs land in $OUT.
set -uo pipefail
source benchmarks/device/prepare.sh
python3 -m benchmarks.contention --model /root/ckpt/english --out "$OUT/contention-plain.json" > "$OUT/contention-plain.txt" 2>&1
echo "plain rc=$?"; tail -1 "$OUT/contention-plain.txt" | cut -c1-2000
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "mps started"
  python3 -m benchmarks.contention --model /root/ckpt/english --label mps --out "$OUT/contention-mps.json" > "$OUT/contention-mps.txt" 2>&1
  echo "mps rc=$?"; tail -1 "$OUT/contention-mps.txt" | cut -c1-2000
  echo quit | nvidia-cuda-mps-control
else
  echo "no nvidia-cuda-mps-control on this machine"
fi
