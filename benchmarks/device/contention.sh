#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage: benchmarks/contention.py as is, then under NVIDIA MPS
# (when the image has its control daemon). JSON and logs land in $OUT.
set -uo pipefail
bash benchmarks/device/install.sh || exit 1
export PYTHONPATH=/root/site:$PWD/src VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -e /root/ckpt/english/.done ] || {
  python3 -m chatterbox_vllm.cli make-checkpoint --variant english --size full --seed 0 --out /root/ckpt/english &&
    touch /root/ckpt/english/.done
} || exit 1
python3 benchmarks/contention.py --model /root/ckpt/english --out "$OUT/contention-plain.json" > "$OUT/contention-plain.txt" 2>&1
echo "plain rc=$?"; tail -1 "$OUT/contention-plain.txt" | cut -c1-2000
if command -v nvidia-cuda-mps-control >/dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && echo "mps started"
  python3 benchmarks/contention.py --model /root/ckpt/english --label mps --out "$OUT/contention-mps.json" > "$OUT/contention-mps.txt" 2>&1
  echo "mps rc=$?"; tail -1 "$OUT/contention-mps.txt" | cut -c1-2000
  echo quit | nvidia-cuda-mps-control
else
  echo "no nvidia-cuda-mps-control on this machine"
fi
