"""The console entry point, run as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatterbox_vllm.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_make_checkpoint_then_synthesize(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    made = run_cli("make-checkpoint", "--variant", "english", "--size", "tiny", "--seed", "3", "--out", str(ckpt))
    assert made.returncode == 0, made.stderr
    assert (ckpt / "t3_cfg.safetensors").is_file() and (ckpt / "conds.pt").is_file()

    out = tmp_path / "hello.wav"
    spoke = run_cli("synthesize", "Hello world.", "--model", str(ckpt), "-o", str(out), "--seed", "0", "--device", "cpu", "--engine", "torch")
    assert spoke.returncode == 0, spoke.stderr
    info = soundfile.info(out)
    assert info.samplerate == 24_000 and info.channels == 1 and info.frames > 0


def test_synthesize_reports_bad_model_without_traceback(tmp_path: Path) -> None:
    result = run_cli("synthesize", "Hello.", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "x.wav"))
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_make_checkpoint_writes_turbo_and_nano_layouts(tmp_path: Path) -> None:
    for variant, t3 in (("turbo", "t3_turbo_v1.safetensors"), ("nano", "t3_nano_v1.safetensors")):
        ckpt = tmp_path / variant
        made = run_cli("make-checkpoint", "--variant", variant, "--size", "tiny", "--out", str(ckpt))
        assert made.returncode == 0, made.stderr
        for name in (t3, "s3gen_meanflow.safetensors", "ve.safetensors", "conds.pt", "vocab.json", "merges.txt"):
            assert (ckpt / name).is_file(), (variant, name)
