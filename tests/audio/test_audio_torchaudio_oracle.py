"""Bit-exactness of our torchaudio replacements (sinc resampling, Kaldi fbank) against torchaudio itself.

torchaudio is not a product dependency; the reference oracle venv has it (pure Python). This test runs it there
when that venv is present (`CHATTERBOX_ORACLE_PYTHON`, default /work/oracle/venv/bin/python) and is skipped
otherwise. The golden fixtures cover the same code indirectly (CAMPPlus embedding and S3Gen prompt tokens).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from chatterbox_vllm.audio.kaldi import kaldi_fbank
from chatterbox_vllm.audio.resample import resample_sinc_hann

ORACLE_PYTHON = Path(os.environ.get("CHATTERBOX_ORACLE_PYTHON", "/work/oracle/venv/bin/python"))
RATES = [(24000, 16000), (44100, 16000), (16000, 24000), (22050, 24000), (48000, 16000), (8000, 16000)]
FBANK_LENGTHS = [400, 401, 12345, 16000]

_SCRIPT = """
import sys, torch, torchaudio
from safetensors.torch import load_file, save_file
x = load_file(sys.argv[1])["x"]
rates = [tuple(map(int, r.split(":"))) for r in sys.argv[3].split(",")]
lengths = [int(n) for n in sys.argv[4].split(",")]
out = {}
for o, n in rates:
    out[f"transform_{o}_{n}"] = torchaudio.transforms.Resample(o, n)(x).contiguous()
    out[f"functional_{o}_{n}"] = torchaudio.functional.resample(x, o, n).contiguous()
for length in lengths:
    out[f"fbank_{length}"] = torchaudio.compliance.kaldi.fbank(x[:1, :length], num_mel_bins=80).contiguous()
save_file(out, sys.argv[2])
"""


@pytest.fixture(scope="module")
def torchaudio_outputs(tmp_path_factory):
    if not ORACLE_PYTHON.is_file():
        pytest.skip(f"no oracle venv with torchaudio at {ORACLE_PYTHON}")
    tmp = tmp_path_factory.mktemp("torchaudio")
    x = (torch.randn(2, 44100, generator=torch.Generator().manual_seed(5)) * 0.3).float()
    save_file({"x": x}, str(tmp / "x.safetensors"))
    cmd = [
        str(ORACLE_PYTHON), "-c", _SCRIPT, str(tmp / "x.safetensors"), str(tmp / "out.safetensors"),
        ",".join(f"{o}:{n}" for o, n in RATES), ",".join(map(str, FBANK_LENGTHS)),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        pytest.skip(f"oracle torchaudio unusable: {res.stderr[-500:]}")
    return x, load_file(str(tmp / "out.safetensors"))


@pytest.mark.parametrize("orig,new", RATES)
def test_resample_matches_torchaudio_exactly(torchaudio_outputs, orig, new):
    x, ref = torchaudio_outputs
    assert torch.equal(resample_sinc_hann(x, orig, new), ref[f"transform_{orig}_{new}"])
    assert torch.equal(resample_sinc_hann(x, orig, new, like_functional=True), ref[f"functional_{orig}_{new}"])


@pytest.mark.parametrize("length", FBANK_LENGTHS)
def test_kaldi_fbank_matches_torchaudio_exactly(torchaudio_outputs, length):
    x, ref = torchaudio_outputs
    assert torch.equal(kaldi_fbank(x[:1, :length], num_mel_bins=80), ref[f"fbank_{length}"])
