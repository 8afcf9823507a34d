#!/usr/bin/env bash
# On the GPU machine, once the parts are in /root/stage (BENCHMARKS.md, "Device staging"): install, make the
# full-size English checkpoint, run the GPU-only tests, then the headline end-to-end run. Everything lands in
# $OUT (run.json, run-log.txt, gpu-tests.txt). Extra arguments go to `e2e.py run`.
set -uo pipefail
bash benchmarks/device/install.sh || exit 1
export PYTHONPATH=/root/site:$PWD/src VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -e /root/ckpt/english/.done ] || {
  python3 -m chatterbox_vllm.cli make-checkpoint --variant english --size full --seed 0 --out /root/ckpt/english &&
    touch /root/ckpt/english/.done
} || exit 1
CHATTERBOX_TEST_CHECKPOINTS=/root/test-ckpt python3 -m pytest -q -p no:cacheprovider -k gpu \
  tests/server/test_s3gen_worker.py > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests rc=$?"
python3 benchmarks/e2e.py run --model /root/ckpt/english --preset high --max-batch-size 64 "$@" \
  --out "$OUT/run.json" > "$OUT/run-log.txt" 2>&1
echo "e2e rc=$?"
grep -E '^(t3|paragraph|first_audio|stages) ' "$OUT/run-log.txt" | cut -c1-1500
