#!/usr/bin/env bash
# Start the chatterbox-vllm speech server: creates .venv on first run (vLLM for NVIDIA GPUs, the CPU build
# otherwise), fetches the model through huggingface_hub, and serves the OpenAI-compatible API.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

usage() {
  cat <<'EOF'
Usage: ./start-api-server.sh [options]

  --preset low|medium|high|auto   VRAM preset (auto: from the GPU's memory; 8 GB -> low, 12 GB -> medium, 24 GB+ -> high)
  --model NAME                    english | multilingual | turbo | nano | random-tiny[-multilingual|-turbo|-nano] | a directory
  --extra-models A,B              more models served beside it (e.g. turbo); a request picks one by its "model"
  --host HOST                     address to listen on (default 0.0.0.0)
  --port PORT                     port (default 8000)
  --api-key KEY                   require "Authorization: Bearer KEY"
  --voices-dir DIR                directory of cloned voices (default: ~/.local/share/chatterbox-vllm/voices on Linux)
  --log-level LEVEL               info (default) | warning | error | debug (everything, tracebacks included)
  --print-config                  print the settings a start would use (preset resolved) as JSON, and exit
  -h, --help                      this help

Every setting can also come from the environment (CHATTERBOX_MODEL, CHATTERBOX_EXTRA_MODELS, CHATTERBOX_PRESET, CHATTERBOX_PORT,
CHATTERBOX_MAX_BATCH_SIZE, CHATTERBOX_MAX_MODEL_LEN, CHATTERBOX_GPU_MEMORY_GIB, ... see README.md) or a .env
file; options given here win. Without access to the Hugging Face hub, use --model with a local directory, or
--model random-tiny for a smoke test (random weights: the audio is noise, about as long as the text would
take to say).
EOF
}

fail() { echo "start-api-server.sh: $*" >&2; exit 2; }

preset="${CHATTERBOX_PRESET:-auto}"
print_config=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --preset) [ $# -ge 2 ] || fail "--preset needs a value"; preset="$2"; shift 2 ;;
    --model) [ $# -ge 2 ] || fail "--model needs a value"; export CHATTERBOX_MODEL="$2"; shift 2 ;;
    --extra-models) [ $# -ge 2 ] || fail "--extra-models needs a value"; export CHATTERBOX_EXTRA_MODELS="$2"; shift 2 ;;
    --host) [ $# -ge 2 ] || fail "--host needs a value"; export CHATTERBOX_HOST="$2"; shift 2 ;;
    --port) [ $# -ge 2 ] || fail "--port needs a value"; export CHATTERBOX_PORT="$2"; shift 2 ;;
    --api-key) [ $# -ge 2 ] || fail "--api-key needs a value"; export CHATTERBOX_API_KEY="$2"; shift 2 ;;
    --voices-dir) [ $# -ge 2 ] || fail "--voices-dir needs a value"; export CHATTERBOX_VOICES_DIR="$2"; shift 2 ;;
    --log-level) [ $# -ge 2 ] || fail "--log-level needs a value"; export CHATTERBOX_LOG_LEVEL="$2"; shift 2 ;;
    --print-config) print_config=1; shift ;;
    *) usage >&2; fail "unknown option: $1" ;;
  esac
done

case "$preset" in
  low|medium|high) ;;
  auto)
    preset=medium
    if command -v nvidia-smi >/dev/null 2>&1 && mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n1); then
      mib=${mib//[^0-9]/}
      if [ -n "$mib" ]; then
        if [ "$mib" -lt 11000 ]; then preset=low; elif [ "$mib" -lt 20000 ]; then preset=medium; else preset=high; fi
        echo "GPU memory ${mib} MiB: preset $preset" >&2
      fi
    fi ;;
  *) fail "--preset must be low, medium, high or auto (got '$preset')" ;;
esac
export CHATTERBOX_PRESET="$preset"

port="${CHATTERBOX_PORT:-8000}"
[[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || fail "port must be 1..65535 (got '$port')"

if [ ! -x .venv/bin/chatterbox-vllm ]; then
  echo "first run: installing into .venv (a few minutes)"
  bash scripts/install.sh
fi
if [ "$print_config" = 1 ]; then exec .venv/bin/chatterbox-vllm serve --print-config; fi
exec .venv/bin/chatterbox-vllm serve
