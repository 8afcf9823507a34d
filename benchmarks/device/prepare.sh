# Sourced by the device scripts here, on the GPU machine once the parts are in /root/stage: installs what arrived,
# sets the environment the benchmarks run in and makes the full-size English checkpoint (once per machine).
bash benchmarks/device/install.sh || exit 1
export PYTHONPATH=/root/site:$PWD/src VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -e /root/ckpt/english/.done ] || {
  python3 -m chatterbox_vllm.cli make-checkpoint --variant english --size full --seed 0 --out /root/ckpt/english &&
    touch /root/ckpt/english/.done
} || exit 1
