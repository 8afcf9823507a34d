#!/usr/bin/env bash
# Build the reference-oracle virtualenv: chatterbox-tts 0.1.7 and what it imports, outside the repository.
#   bash tools/reference/setup_oracle.sh /path/to/oracle-venv
# Re-running is cheap (pip finds everything installed). Never used by the product or by CI.
#
# Why the torchaudio surgery: the only torchaudio on the registry that fits torch 2.13 is a CUDA build whose
# compiled extension needs libc10_cuda.so. torchaudio falls back to pure Python when its extension files are
# missing, and the reference only uses pure-Python parts (transforms.Resample, compliance.kaldi.fbank).
set -euo pipefail
venv="${1:?usage: setup_oracle.sh VENV_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check -q --no-deps -r "$here/oracle-requirements.txt"

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
find "$site/torchaudio/lib" -name '*.so' -delete 2>/dev/null || true

HF_HUB_OFFLINE=1 "$venv/bin/python" -W ignore - <<'PY'
import torch, torchaudio, perth
import torchaudio.compliance.kaldi as kaldi
from chatterbox.tts import ChatterboxTTS  # noqa: F401
from chatterbox.mtl_tts import ChatterboxMultilingualTTS  # noqa: F401
assert perth.PerthImplicitWatermarker is not None, "perth needs setuptools<81 (pkg_resources)"
assert kaldi.fbank(torch.zeros(1, 16000), num_mel_bins=80).shape == (98, 80)
print("oracle ready:", "torch", torch.__version__, "torchaudio", torchaudio.__version__)
PY
