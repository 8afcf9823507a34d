"""Test-only code stays out of the runtime: serving and loading a checkpoint never import the random-weight
generator (`chatterbox_vllm.random_checkpoint`); only a `random-tiny` model name does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

GENERATOR = "chatterbox_vllm.random_checkpoint"

# Run in a fresh interpreter: this one has imported the generator for the test fixtures already.
PROGRAM = """
import json, sys
from pathlib import Path
import chatterbox_vllm.cli, chatterbox_vllm.server.app, chatterbox_vllm.server.startup
from chatterbox_vllm.checkpoint.hub import resolve_model
from chatterbox_vllm.tts import ChatterboxTTS

checkpoint, cache = Path(sys.argv[1]), Path(sys.argv[2])
seen = {}
seen["imports"] = sorted(name for name in sys.modules if name.startswith(%(generator)r))
tts = ChatterboxTTS.from_local(checkpoint, device="cpu", engine="torch")
tts.close()
seen["load"] = sorted(name for name in sys.modules if name.startswith(%(generator)r))
resolve_model("random-tiny", server_cache_dir=cache)
seen["random_tiny"] = sorted(name for name in sys.modules if name.startswith(%(generator)r))
print(json.dumps(seen))
""" % {"generator": GENERATOR}


def test_serving_and_loading_never_import_the_random_weight_generator(
    english_tiny_checkpoint: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(english_tiny_checkpoint), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["imports"] == [] and seen["load"] == []
    assert seen["random_tiny"] == [GENERATOR]  # the check can fail: a random-tiny name does import it
