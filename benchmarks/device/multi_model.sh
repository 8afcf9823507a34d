#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage: multilingual and Turbo in one server under a VRAM budget
# (benchmarks/multi_model.py). Arguments go to multi_model.py (default: the low preset, a 9.5 GiB budget with
# max_model_len 1024, so the plan shrinks both T3 budgets from 1.75 to 1.65 GiB). Lands in $OUT.
set -uo pipefail
bash benchmarks/device/install.sh || exit 1
export PYTHONPATH=/root/site:$PWD/src VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for variant in multilingual turbo; do
  [ -e /root/ckpt/$variant/.done ] || {
    python3 -m chatterbox_vllm.cli make-checkpoint --variant $variant --size full --seed 0 --out /root/ckpt/$variant &&
      touch /root/ckpt/$variant/.done
  } || exit 1
done
echo "checkpoints ready at $(date +%T)"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--preset low --vram-budget-gib 9.5 --concurrency 4)
CHATTERBOX_MAX_MODEL_LEN=${CHATTERBOX_MAX_MODEL_LEN:-1024} python3 -m benchmarks.multi_model \
  --models /root/ckpt/multilingual /root/ckpt/turbo "${args[@]}" --out "$OUT/multi.json" 2>&1 | tee "$OUT/multi-log.txt" |
  grep -E '^(loaded|alone|together|device memory)|VRAM plan|Error|error' | cut -c1-400
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
